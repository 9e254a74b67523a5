"""systemd/relaybox.service: hardened, graceful, restartable; valid for systemd itself."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "relaybox.service"


def _parse() -> dict[str, dict[str, list[str]]]:
    """The unit as {section: {key: [values…]}} (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"key outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _one(section: dict[str, list[str]], key: str) -> str:
    assert key in section, f"{key} missing"
    return section[key][-1]


def test_the_unit_parses_with_the_expected_sections() -> None:
    unit = _parse()
    assert set(unit) == {"Unit", "Service", "Install"}
    assert _one(unit["Install"], "WantedBy") == "multi-user.target"
    assert "network-online.target" in _one(unit["Unit"], "After")
    # configparser reads it too (no stray syntax), with repeated keys allowed.
    configparser.ConfigParser(strict=False, interpolation=None).read_string(UNIT.read_text())


def test_it_runs_relaybox_serve_as_a_dedicated_user_on_its_data_dir() -> None:
    svc = _parse()["Service"]
    assert _one(svc, "ExecStart").endswith("relaybox serve")
    assert _one(svc, "User") == "relaybox" and _one(svc, "Group") == "relaybox"
    data_dir = "/var/lib/relaybox"
    assert f"RELAYBOX_DATA_DIR={data_dir}" in svc["Environment"]
    assert _one(svc, "StateDirectory") == "relaybox"
    assert data_dir in _one(svc, "ReadWritePaths").split()


def test_it_is_hardened() -> None:
    svc = _parse()["Service"]
    expected = {
        "ProtectSystem": "strict", "NoNewPrivileges": "yes", "PrivateTmp": "yes",
        "ProtectHome": "yes", "CapabilityBoundingSet": "", "PrivateDevices": "yes",
        "RestrictSUIDSGID": "yes", "ProtectKernelTunables": "yes",
        "ProtectControlGroups": "yes", "LockPersonality": "yes", "UMask": "0077",
    }
    for key, value in expected.items():
        assert _one(svc, key) == value, key
    assert set(_one(svc, "RestrictAddressFamilies").split()) == {"AF_UNIX", "AF_INET",
                                                                 "AF_INET6"}
    assert "@system-service" in svc["SystemCallFilter"]
    # The embedded Redis socket must be reachable by the admin CLI: not in PrivateTmp.
    assert "TMPDIR=/run/relaybox" in svc["Environment"]
    assert _one(svc, "RuntimeDirectory") == "relaybox"


def test_it_stops_gracefully_and_restarts_on_failure() -> None:
    svc = _parse()["Service"]
    assert _one(svc, "KillSignal") == "SIGTERM"
    assert int(_one(svc, "TimeoutStopSec")) >= 10
    assert _one(svc, "Restart") == "on-failure"


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    """systemd-analyze verify, when systemd is installed (the checks above always run)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        # Nothing more to ask of a machine without systemd: the parse tests cover the keys.
        assert _parse()["Service"]
        return
    # verify checks that ExecStart exists: point it at this environment's relaybox.
    exe = Path(sys.executable).with_name("relaybox")
    text = UNIT.read_text().replace("/opt/relaybox/venv/bin/relaybox", str(exe))
    unit = tmp_path / "relaybox.service"
    unit.write_text(text)
    res = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                         timeout=60)
    noise = [line for line in res.stderr.splitlines() if "relaybox.service" in line]
    assert res.returncode == 0, res.stderr
    assert noise == [], noise  # unknown keys or bad values are only warnings: none wanted
