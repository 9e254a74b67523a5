"""Operations fixtures (shared with the CLI tests)."""

from __future__ import annotations

from tests.cli.conftest import data_dir, live

__all__ = ["data_dir", "live"]
