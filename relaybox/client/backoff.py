"""Exponential backoff with jitter, for reconnects and publish retries."""

from __future__ import annotations

import random

__all__ = ["backoff_delay"]


def backoff_delay(attempt: int, initial: float, maximum: float, rng: random.Random) -> float:
    """The wait before retry number ``attempt`` (0-based): half of it fixed, half random.

    The ceiling doubles per attempt up to ``maximum``. The random half spreads
    devices that all reconnect after a server restart; the fixed half keeps
    one device from retrying in a tight loop.
    """
    ceiling = min(maximum, initial * 2 ** min(attempt, 32))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)
