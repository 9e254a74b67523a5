"""The web app at /app/ in a real Chromium against a real server, with Python devices.

Times that the issue asks to be "within 1 s" are measured and printed (run with -s to
see them; docs/client-js.md records them), and asserted only with a generous bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import httpx
import pytest

pytest.importorskip("playwright.async_api", reason="pip install -e '.[test]'")
from playwright.async_api import expect

from relaybox.client import Client, Event, Identity
from tests.support import Server
from tests.web.conftest import account, cli, pair_page, shot

GENEROUS_S = 10  # bound for "within 1 s" waits; the measured time is printed


class Collector:
    """A Python device that records every event the SDK hands it."""

    def __init__(self, identity: Identity) -> None:
        self.client = Client(identity, backoff_initial=0.05, backoff_max=0.5)
        self.events: list[Event] = []
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Collector:
        await self.client.__aenter__()
        await self.client.wait_synced()
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        async for item in self.client.events():
            if isinstance(item, Event):
                self.events.append(item)
                self._changed.set()

    async def wait_for(self, pred: Any, timeout: float = GENEROUS_S) -> Event:
        async with asyncio.timeout(timeout):
            while True:
                for e in self.events:
                    if pred(e):
                        return e
                self._changed.clear()
                await self._changed.wait()

    async def __aexit__(self, *exc: object) -> None:
        self.client.stop()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        await self.client.aclose()


def texts(events: list[Event]) -> list[str]:
    return [e.body["text"] for e in events if not e.stream.startswith("sys.")]


async def stored(identity: Identity, stream: str) -> list[Any]:
    from relaybox.client import RestClient

    async with RestClient(identity) as api:
        doc = await api.request("GET", f"/streams/{stream}/events",
                                params={"after": 0, "limit": 1000})
    return [e["body"] for e in doc["events"]]


def row(page: Any, text: str) -> Any:
    return page.locator("#events .event .body", has_text=text)


async def test_pair_by_qr_link_then_exchange_events_both_ways(server: Server, page: Any) -> None:
    acct = account(server)
    await pair_page(page, server, acct.name)
    assert await page.evaluate("window.isSecureContext")
    async with Collector(acct.devices[0]) as py:
        # A Python device publishes: the event shows in the page.
        t0 = time.perf_counter()
        await py.client.publish("clipboard", {"text": "from python"})
        await expect(row(page, "from python")).to_be_visible(timeout=GENEROUS_S * 1000)
        shown_s = time.perf_counter() - t0
        print(f"\nevent from a Python device shown in the page after {shown_s * 1000:.0f} ms")
        await expect(page.locator("#events .event .from").first).to_have_text(
            f"{acct.name}-dev0")  # the sender's name, from the device list

        # The page publishes, by keyboard alone: the Python device receives it once.
        await page.locator("#send-body").focus()
        await page.keyboard.type("from the browser")
        t0 = time.perf_counter()
        await page.keyboard.press("Control+Enter")
        await py.wait_for(lambda e: e.body == {"text": "from the browser"})
        print(f"event from the page received by a Python device after "
              f"{(time.perf_counter() - t0) * 1000:.0f} ms")
        await page.fill("#send-body", "marker")
        await page.keyboard.press("Control+Enter")
        await py.wait_for(lambda e: e.body == {"text": "marker"})
        assert texts(py.events).count("from the browser") == 1
        assert texts(py.events) == ["from the browser", "marker"]
        assert (await stored(acct.devices[0], "clipboard")).count(
            {"text": "from the browser"}) == 1
        await expect(row(page, "from the browser")).to_have_count(1)

        # One tap copies an event's text.
        await row(page, "from python").locator("xpath=..").get_by_role("button").click()
        assert await page.evaluate("navigator.clipboard.readText()") == "from python"
    await shot(page, "app-phone-streams")


async def test_a_row_shown_before_the_device_names_arrive_is_relabelled(
        server: Server, page: Any) -> None:
    """The page's first device list is held back until an event has been shown under the
    sender's id: once the list arrives, the row names the sender."""
    acct = account(server)
    held, release = asyncio.Event(), asyncio.Event()

    async def hold(route: Any) -> None:
        held.set()
        await release.wait()
        await route.continue_()

    await page.route("**/api/v1/devices", hold)
    await pair_page(page, server, acct.name)
    await asyncio.wait_for(held.wait(), GENEROUS_S)
    async with Collector(acct.devices[0]) as py:
        await py.client.publish("clipboard", {"text": "before the names"})
        await expect(row(page, "before the names")).to_be_visible(timeout=GENEROUS_S * 1000)
        sender = page.locator("#events .event .from").first
        await expect(sender).to_have_text(f"device {acct.devices[0].device_id[-8:]}")
        release.set()
        await expect(sender).to_have_text(f"{acct.name}-dev0", timeout=GENEROUS_S * 1000)


async def test_a_rename_heard_while_the_device_list_is_on_its_way_is_not_lost(
        server: Server, page: Any) -> None:
    """The page's first device list is read, then held; meanwhile another device is renamed
    and the page hears it on sys.devices. The held (older) list arrives after: the page
    reads the list again, and names the device as it is now."""
    from relaybox.client import RestClient

    acct = account(server)
    dev0 = acct.devices[0]
    read, release = asyncio.Event(), asyncio.Event()
    lists = 0

    async def older_first(route: Any) -> None:
        nonlocal lists
        lists += 1
        if lists > 1:
            await route.continue_()
            return
        response = await route.fetch()  # the list as it is before the rename
        read.set()
        await release.wait()
        await route.fulfill(response=response)

    await page.route("**/api/v1/devices", older_first)
    await pair_page(page, server, acct.name)
    await asyncio.wait_for(read.wait(), GENEROUS_S)
    async with RestClient(dev0) as api:
        await api.request("PATCH", f"/devices/{dev0.device_id}", json={"name": "kitchen"})
    await page.wait_for_function(  # the page heard the rename
        "() => window.relayboxApp.streams.get('sys.devices')?.events"
        ".some((e) => e.body && e.body.event === 'device_renamed')")
    release.set()
    await expect(page.locator("#device-list")).to_contain_text("kitchen",
                                                               timeout=GENEROUS_S * 1000)
    assert lists == 2


async def test_reload_keeps_the_identity_and_resumes_from_the_stored_cursor(
        server: Server, page: Any) -> None:
    acct = account(server)
    device_id = await pair_page(page, server, acct.name)
    async with Collector(acct.devices[0]) as py:
        for n in (1, 2):
            await py.client.publish("notes", {"text": f"note {n}"})
        await expect(row(page, "note 2")).to_be_visible(timeout=GENEROUS_S * 1000)
        # Wait until the page's cursor for "notes" is in IndexedDB.
        await page.wait_for_function(
            "async () => { const m = await import('/sdk/relaybox.js');"
            " const c = await new m.IndexedDBStore().get('cursors');"
            " return c && c.streams.notes === 2; }")
        await page.goto("about:blank")
        for n in (3, 4):
            await py.client.publish("notes", {"text": f"note {n}"})
        await page.goto(server.url + "/app/")
        await expect(page.locator("#status")).to_have_text("Connected", timeout=15_000)
        assert await page.evaluate("window.relayboxApp.identity.device_id") == device_id
        await expect(page.locator("#pair-view")).to_be_hidden()
        await expect(row(page, "note 4")).to_be_visible(timeout=GENEROUS_S * 1000)
        for n in (1, 2, 3, 4):
            await expect(row(page, f"note {n}")).to_have_count(1)
        # The gateway sent only what came after the stored cursor.
        stats = await page.evaluate("window.relayboxApp.client.stats")
        notes = await page.evaluate("window.relayboxApp.client.cursors().notes")
        assert notes == 4
        assert stats["duplicates"] == 0
        assert stats["received"] == 2, stats


@pytest.mark.parametrize("own_server", [{"RELAYBOX_GATEWAY_HEARTBEAT_S": "20"}],
                         indirect=True)
async def test_server_restart_under_the_open_page(own_server: Server, page: Any) -> None:
    acct = account(own_server)
    await pair_page(page, own_server, acct.name)
    own_server.stop()
    await expect(page.locator("#status")).to_contain_text("Offline", timeout=15_000)
    # Sent while the server is down: queued, then delivered once it is back.
    await page.fill("#send-body", "sent while down")
    await page.keyboard.press("Control+Enter")
    await expect(page.locator("#events .event.pending")).to_have_count(1)
    own_server.start()
    async with Collector(acct.devices[0]) as py:
        await expect(page.locator("#status")).to_have_text("Connected", timeout=40_000)
        await py.wait_for(lambda e: e.body == {"text": "sent while down"}, timeout=40)
        await page.fill("#send-body", "after")
        await page.keyboard.press("Control+Enter")
        await py.wait_for(lambda e: e.body == {"text": "after"})
        assert texts(py.events) == ["sent while down", "after"]
        assert await stored(acct.devices[0], "clipboard") == [
            {"text": "sent while down"}, {"text": "after"}]
        await expect(page.locator("#events .event.pending")).to_have_count(0)
        await expect(row(page, "sent while down")).to_have_count(1)


async def test_revoking_the_browser_device_shows_and_stops(server: Server, page: Any) -> None:
    acct = account(server)
    device_id = await pair_page(page, server, acct.name)
    t0 = time.perf_counter()
    out = cli(server, "device", "revoke", device_id, "--json")
    t1 = time.perf_counter()
    await expect(page.locator("#notice")).to_contain_text("This device was revoked",
                                                          timeout=GENEROUS_S * 1000)
    t2 = time.perf_counter()
    print(f"\nrevocation shown in the page {(t2 - t1) * 1000:.0f} ms after the CLI ended "
          f"(the CLI itself ran {(t1 - t0) * 1000:.0f} ms; server notified: "
          f"{json.loads(out).get('server_notified')})")
    await expect(page.locator("#status")).to_have_text("Revoked")
    client = await page.evaluate(
        "({state: relayboxApp.client.state, retry: relayboxApp.client.reconnectScheduled,"
        " code: relayboxApp.client.fatal.code})")
    assert client == {"state": "stopped", "retry": False, "code": "revoked"}
    await shot(page, "app-phone-revoked")


@pytest.mark.parametrize("own_server", [{"RELAYBOX_GATEWAY_PUBLISH_RATE_PER_S": "0"}],
                         indirect=True)
async def test_two_thousand_events_keep_the_page_responsive(own_server: Server,
                                                            page: Any) -> None:
    acct = account(own_server)
    await pair_page(page, own_server, acct.name)
    await page.evaluate("window.__longtasks.length = 0")
    async with Collector(acct.devices[0]) as py:
        t0 = time.perf_counter()
        for start in range(0, 2000, 250):
            await asyncio.gather(*(py.client.publish("burst", {"text": f"event {n}"})
                                   for n in range(start + 1, start + 251)))
        await page.click("#stream-list button:has-text('burst')")
        await expect(page.locator("#events .event").first).to_contain_text(
            "event 2000", timeout=60_000)
        elapsed = time.perf_counter() - t0
    longest = await page.evaluate("Math.max(0, ...window.__longtasks)")
    rows = await page.locator("#events .event").count()
    head = await page.evaluate("window.relayboxApp.client.cursors().burst")
    # The Long Tasks API reports tasks over 50 ms only: 0 means none was that long.
    longest_text = f"{longest:.0f} ms" if longest else "none over 50 ms"
    print(f"\n2000 events published and shown in {elapsed:.1f} s; longest main-thread task: "
          f"{longest_text}; {rows} rows in the DOM")
    assert head == 2000
    assert rows <= 200  # the rendered rows are capped
    # Responsive: input is handled while events stream in (a long task blocks it).
    assert longest < 500, longest
    # The page still answers input at once.
    await page.fill("#send-body", "still typing")
    await expect(page.locator("#send-body")).to_have_value("still typing")


async def test_insecure_context_says_so_and_links_the_fix(server: Server, page: Any) -> None:
    # relaybox.test maps to 127.0.0.1, but plain http to a name other than localhost is
    # not a secure context: the browser offers no WebCrypto there.
    await page.goto(f"http://relaybox.test:{server.port}/app/")
    assert not await page.evaluate("window.isSecureContext")
    notice = page.locator("#notice")
    await expect(notice).to_contain_text("cannot work over plain http")
    await expect(notice).to_contain_text("tls.cert_file")
    link = notice.locator("a#https-link")
    await expect(link).to_have_attribute("href", f"https://relaybox.test:{server.port}/app/")
    await expect(page.locator("#status")).to_have_text("Not secure")
    await shot(page, "app-phone-insecure")


def test_security_headers_on_pages(server: Server) -> None:
    for path in ("/app/", "/docs", "/sdk/relaybox.js", "/app/app.js"):
        r = httpx.get(server.url + path)
        assert r.status_code == 200, path
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp
        assert "http" not in csp.replace(f"ws://127.0.0.1:{server.port}", "").replace(
            f"wss://127.0.0.1:{server.port}", "")
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
    sdk = httpx.get(server.url + "/sdk/relaybox.js")
    assert sdk.headers["access-control-allow-origin"] == "*"
    assert sdk.headers["content-type"].startswith("text/javascript")
    again = httpx.get(server.url + "/sdk/relaybox.js",
                      headers={"If-None-Match": sdk.headers["etag"]})
    assert again.status_code == 304
    assert httpx.get(server.url + "/app/missing.js").status_code == 404
    assert httpx.get(server.url + "/app/../pyproject.toml").status_code == 404
