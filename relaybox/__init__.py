"""relaybox: a self-hosted relay for a person's own devices."""

from __future__ import annotations

__version__ = "0.1.0"
