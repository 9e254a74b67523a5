"""The alert rules pass promtool's checks and unit tests; rules and dashboard name real metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

OPS = Path(__file__).resolve().parents[2] / "docs" / "ops"
DOCS = OPS.parent / "operations.md"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool is needed (Debian package 'prometheus'; .ci/run installs it)"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120,
                          cwd=OPS)


def test_rules_are_valid() -> None:
    out = _promtool("check", "rules", "alerts.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_rule_unit_tests_pass() -> None:
    out = _promtool("test", "rules", "alerts_test.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def _documented() -> set[str]:
    names = set(re.findall(r"^\| `(relaybox_[a-z_]+)` \|", DOCS.read_text(), re.M))
    assert names
    return names


def _referenced(text: str) -> set[str]:
    found = set(re.findall(r"\b(relaybox_[a-z_]+)", text))
    # Histogram series and the job name are not metric families of their own.
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in found} - {"relaybox_"}


def test_every_alert_is_tested_and_documented() -> None:
    rules = (OPS / "alerts.yml").read_text()
    alerts = set(re.findall(r"^\s+- alert: (\w+)", rules, re.M))
    tested = set(re.findall(r"alertname: (\w+)", (OPS / "alerts_test.yml").read_text()))
    assert alerts and alerts <= tested
    documented = set(re.findall(r"^\| `(Relaybox\w+)`", DOCS.read_text(), re.M))
    assert alerts == documented


def test_rules_and_dashboard_use_documented_metrics() -> None:
    documented = _documented()
    assert _referenced((OPS / "alerts.yml").read_text()) <= documented
    dashboard = json.loads((OPS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 15
    assert _referenced("\n".join(exprs)) <= documented
