"""Entry point for ``python -m relaybox``."""

from __future__ import annotations

from relaybox.cli import main

main()
