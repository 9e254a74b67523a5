"""alertmanager.yml is valid and routes by severity; every alert links a runbook section."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

OPS = Path(__file__).resolve().parents[2] / "docs" / "ops"
DOCS = OPS.parent / "operations.md"
RUNBOOK_BASE = "https://relaybox.example.org/docs/operations.md#"


def _amtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("amtool")
    assert exe, "amtool is needed (Debian package prometheus-alertmanager; .ci/run installs it)"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, cwd=OPS)


def _rules() -> list[dict[str, object]]:
    groups = yaml.safe_load((OPS / "alerts.yml").read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", markdown, re.M)}


def test_config_is_valid() -> None:
    out = _amtool("check-config", "alertmanager.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "5 receivers" in out.stdout and "1 templates" in out.stdout


@pytest.mark.parametrize(("labels", "receivers"), [
    (["severity=critical", "alertname=RelayboxDown"], "pagerduty,ntfy,slack,webhook,email"),
    (["severity=warning", "alertname=RelayboxBackupTooOld"], "slack,webhook,email"),
    (["severity=info", "alertname=RelayboxHandshakeFailuresHigh"], "webhook,email"),
])
def test_severity_decides_who_is_told(labels: list[str], receivers: str) -> None:
    out = _amtool("config", "routes", "test", "--config.file=alertmanager.yml", *labels)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == receivers


def test_templates_render() -> None:
    for name in ("relaybox.title", "relaybox.text", "relaybox.slack.text",
                 "relaybox.email.html"):
        out = _amtool("template", "render", "--template.glob=templates/*.tmpl",
                      f"--template.text={{{{ template \"{name}\" . }}}}")
        assert out.returncode == 0, f"{name}: {out.stdout}{out.stderr}"


def test_every_alert_has_a_severity_and_a_runbook_section() -> None:
    anchors = _anchors(DOCS.read_text())
    rules = _rules()
    assert len(rules) >= 16
    for rule in rules:
        name = str(rule["alert"])
        labels, notes = rule["labels"], rule["annotations"]
        assert isinstance(labels, dict) and isinstance(notes, dict)
        assert labels["severity"] in ("critical", "warning", "info"), name
        assert notes["runbook_url"] == RUNBOOK_BASE + name.lower(), name
        assert name.lower() in anchors, f"docs/operations.md has no section '### {name}'"


def test_the_asked_for_failures_have_alerts() -> None:
    """Error rate, latency, down, database, Redis, memory, CPU, backups, replication."""
    exprs = " ".join(str(r["expr"]) for r in _rules())
    for needle in ('status=~"5.."', "relaybox_http_request_duration_seconds_bucket",
                   'up{job="relaybox"} == 0', "absent(up", "relaybox_database_up == 0",
                   "relaybox_redis_up == 0", "relaybox_memory_resident_bytes",
                   "relaybox_cpu_seconds_total", "relaybox_backup_last_success_timestamp",
                   'relaybox_scheduler_failures_total', "relaybox_replication_lag_seconds"):
        assert needle in exprs, needle
