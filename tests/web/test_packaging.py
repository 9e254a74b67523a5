"""Every file of the browser device ships in the wheel (pyproject.toml package-data)."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_package_data_covers_every_web_file() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["relaybox"]
    package = ROOT / "relaybox"
    files = [p.relative_to(package).as_posix() for p in (package / "web").rglob("*")
             if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".py"]
    assert files
    # fnmatch's * also crosses "/", so match segment by segment as setuptools does.
    def covered(name: str) -> bool:
        return any(len(pat.split("/")) == len(name.split("/")) and fnmatch.fnmatch(name, pat)
                   for pat in patterns)
    assert [f for f in files if not covered(f)] == []
