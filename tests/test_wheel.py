"""The wheel: built from the source tree, installed into a fresh venv, it finds and applies
its migrations (the top-level migrations/ folder, shipped as ``relaybox_migrations``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What a build needs from the checkout; copied, so the build leaves nothing in the tree.
SOURCES = ("pyproject.toml", "setup.py", "README.md", "relaybox", "migrations")


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    # Never from the checkout: ``python -c`` puts the working folder first on sys.path.
    env = dict(os.environ if env is None else env)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300, check=False)
    assert proc.returncode == 0, f"{args}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_the_wheel_ships_the_migrations_and_applies_them_when_installed(
        tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    # No build isolation: setuptools comes from this venv, not from an index.
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", tmp_path / "dist", src, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("relaybox-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(n.split("/")[1][:-3] for n in names
                     if n.startswith("relaybox_migrations/0") and n.endswith(".py"))
    expected = sorted(p.stem for p in (ROOT / "migrations").glob("[0-9][0-9][0-9]_*.py"))
    assert shipped == expected and expected
    assert not any(n.startswith("relaybox/migrations/") for n in names)

    # A fresh venv that sees this venv's dependencies through a .pth line: a path line
    # only appends the folder to sys.path, it does not run the .pth files in it, so the
    # editable install of relaybox there (a finder loaded by a .pth) stays out of sight.
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    bindir = venv / "bin"
    purelib = Path(_run(bindir / "python", "-c",
                        "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                        cwd=tmp_path).strip())
    (purelib / "zz_relaybox_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(sys.executable, "-m", "pip", "--python", bindir / "python", "install", "--no-deps",
         "--no-index", "-q", wheel, cwd=tmp_path)

    where = json.loads(_run(bindir / "python", "-c",
                            "import json, relaybox, relaybox_migrations; "
                            "print(json.dumps([relaybox.__file__, "
                            "relaybox_migrations.__file__]))", cwd=tmp_path))
    for path in where:
        assert Path(path).resolve().is_relative_to(purelib.resolve()), where

    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYBOX_")}
    env["RELAYBOX_DATA_DIR"] = str(tmp_path / "data")

    def migrate(action: str) -> dict[str, list[str]]:
        out = _run(bindir / "relaybox", "migrate", action, "--json", cwd=tmp_path, env=env)
        return json.loads(out)  # type: ignore[no-any-return]

    assert migrate("status") == {"applied": [], "pending": expected}
    assert migrate("up")["migrations"] == expected
    assert migrate("status") == {"applied": expected, "pending": []}
