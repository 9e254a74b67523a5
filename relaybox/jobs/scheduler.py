"""The scheduler inside ``serve`` (retention hourly, backup daily); owned by the operations work."""

from __future__ import annotations

from typing import Any


async def start(ctx: Any) -> None:
    """Start the jobs for this server process."""


async def stop(ctx: Any) -> None:
    """Stop the jobs."""
