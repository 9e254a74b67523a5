"""Browser fixtures: a real server, Debian's Chromium driven by Playwright, Python devices.

The browser is /usr/bin/chromium (never a downloaded build). Every request a page makes
outside the server is blocked and fails the test. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from relaybox.client import Identity
from tests.client.conftest import _pools, identity_for, start_server, stop_server
from tests.support import Server

CHROMIUM = os.environ.get("RELAYBOX_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent.parent / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 # A name for 127.0.0.1 that is not "localhost": plain http there is not a
                 # secure context (test_insecure_context).
                 "--host-resolver-rules=MAP relaybox.test 127.0.0.1"]
PHONE = {"width": 360, "height": 740}
DESKTOP = {"width": 1280, "height": 800}
LOCAL_HOSTS = {"127.0.0.1", "localhost", "relaybox.test"}


def _browser_missing() -> str | None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = _browser_missing()
    # CI installs both (.ci/run): there a missing browser fails the tests, never skips them.
    if missing is None or os.environ.get("CI"):
        return
    for item in items:
        if "browser" in item.fixturenames:
            item.add_marker(pytest.mark.skip(reason=missing))


# Every page of a module pairs from 127.0.0.1: the per-address limits on pairing and
# token requests (rate_limits.*) are for the Internet, not for a test run.
LIMITS = {"RELAYBOX_RATE_LIMITS_PAIRING_PER_MIN": "1000",
          "RELAYBOX_RATE_LIMITS_TOKEN_PER_MIN": "1000"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("web") / "data", users=10, **LIMITS)
    yield srv
    stop_server(srv)


@pytest.fixture
def own_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    """A server for one test (it may be restarted); env settings by indirect parameter."""
    srv = start_server(tmp_path / "data", users=1, **LIMITS, **getattr(request, "param", {}))
    yield srv
    stop_server(srv)


@dataclass
class Account:
    """A user no other test uses, with the Python devices seeded for it."""

    server: Server
    name: str
    devices: list[Identity] = field(default_factory=list)


def account(server: Server) -> Account:
    name, devs = _pools[server.data_dir].pop()
    return Account(server, name, [identity_for(server, d) for d in devs])


def cli(server: Server, *args: str) -> str:
    """Run the relaybox CLI against ``server``'s data dir (as an operator would)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYBOX_")}
    proc = subprocess.run([sys.executable, "-m", "relaybox", "--data-dir", str(server.data_dir),
                           *args], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def pairing_link(server: Server, user: str) -> str:
    """``relaybox pair USER --json``'s link: what the QR code in the terminal holds."""
    doc = json.loads(cli(server, "pair", user, "--json"))
    assert doc["link"].startswith(server.url + "/app/#pair=")
    return str(doc["link"])


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


class Guard:
    """Blocks and records every request that leaves the relaybox server."""

    def __init__(self) -> None:
        self.external: list[str] = []
        self.console_errors: list[str] = []

    async def route(self, route: Any) -> None:
        host = urlsplit(route.request.url).hostname
        if route.request.url.startswith(("data:", "blob:")) or host in LOCAL_HOSTS:
            await route.continue_()
        else:
            self.external.append(route.request.url)
            await route.abort()


async def new_page(browser: Any, guard: Guard, *, viewport: dict[str, int] = PHONE,
                   color_scheme: str = "light") -> Any:
    context = await browser.new_context(viewport=viewport, color_scheme=color_scheme)
    await context.grant_permissions(["clipboard-read", "clipboard-write"])
    await context.route("**/*", guard.route)
    page = await context.new_page()
    page.on("console", lambda m: guard.console_errors.append(m.text)
            if m.type == "error" else None)
    page.on("pageerror", lambda e: guard.console_errors.append(f"pageerror: {e}"))
    # The longest main-thread task, from the Long Tasks API (tasks over 50 ms).
    await context.add_init_script(
        "window.__longtasks = [];"
        "new PerformanceObserver((l) => { for (const e of l.getEntries())"
        " window.__longtasks.push(e.duration); }).observe({type: 'longtask', buffered: true});")
    return page


@pytest.fixture
async def guard() -> AsyncIterator[Guard]:
    g = Guard()
    yield g
    assert g.external == [], f"requests outside the server: {g.external}"
    csp = [e for e in g.console_errors if "Content Security Policy" in e]
    assert csp == [], csp


@pytest.fixture
async def page(browser: Any, guard: Guard) -> AsyncIterator[Any]:
    p = await new_page(browser, guard)
    yield p
    await p.context.close()


async def pair_page(page: Any, server: Server, user: str) -> str:
    """Pair the page through the QR link, by keyboard alone; returns its device id."""
    from playwright.async_api import expect

    await page.goto(pairing_link(server, user))
    await expect(page.locator("#pair-view")).to_be_visible()
    # The name field has the focus, the code came from the link: Enter pairs.
    await expect(page.locator("#pair-name")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page.locator("#status")).to_have_text("Connected", timeout=15_000)
    return str(await page.evaluate("window.relayboxApp.identity.device_id"))


def shot(page: Any, name: str) -> Any:
    ARTIFACTS.mkdir(exist_ok=True)
    return page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
