"""/docs and /app/ render with every request outside the server blocked, phone and desktop.

The ``guard`` fixture fails a test on any request that leaves the server and on any
Content-Security-Policy violation. Screenshots are kept in test-artifacts/.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("playwright.async_api", reason="pip install -e '.[test]'")
from playwright.async_api import expect

from tests.support import Server
from tests.web.conftest import DESKTOP, PHONE, Guard, account, new_page, pair_page, shot

SIZES = [pytest.param(PHONE, id="phone"), pytest.param(DESKTOP, id="desktop")]


@pytest.mark.parametrize("viewport", SIZES)
async def test_docs_render_from_the_server_alone(server: Server, browser: Any, guard: Guard,
                                                 viewport: dict[str, int]) -> None:
    page = await new_page(browser, guard, viewport=viewport)
    response = await page.goto(server.url + "/docs")
    assert response is not None and response.ok
    assert "default-src 'self'" in response.headers["content-security-policy"]
    # Swagger UI drew the operations from /docs/openapi.json.
    await expect(page.locator(".opblock").first).to_be_visible(timeout=15_000)
    await expect(page.get_by_text("/api/v1/devices", exact=True).first).to_be_visible()
    assert await page.locator(".opblock").count() > 10
    await shot(page, f"docs-{viewport['width']}")
    await page.context.close()


@pytest.mark.parametrize("viewport", SIZES)
@pytest.mark.parametrize("scheme", ["light", "dark"])
async def test_app_renders_from_the_server_alone(server: Server, browser: Any, guard: Guard,
                                                 viewport: dict[str, int], scheme: str) -> None:
    page = await new_page(browser, guard, viewport=viewport, color_scheme=scheme)
    acct = account(server)
    await pair_page(page, server, acct.name)
    await page.fill("#send-body", "hello from the web app")
    await page.keyboard.press("Control+Enter")
    await expect(page.locator("#events .event:not(.pending)")).to_have_count(1)
    # Nothing sticks out sideways at 360 px.
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= viewport["width"], width
    background = await page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert (background == "rgb(13, 17, 23)") == (scheme == "dark"), background
    await shot(page, f"app-{viewport['width']}-{scheme}")
    await page.click("#tab-devices")
    await page.click("#add-device")
    await expect(page.locator("#invite-qr svg")).to_be_visible()
    link = await page.locator("#invite-link").text_content()
    assert link is not None and link.startswith(server.url + "/app/#pair=")
    assert await page.locator("#invite-qr svg").get_attribute("data-text") == link
    await shot(page, f"app-{viewport['width']}-{scheme}-invite")
    await page.context.close()


async def test_the_app_is_installable(server: Server, page: Any) -> None:
    response = await page.goto(server.url + "/app/")
    assert response is not None and response.ok
    manifest = await page.evaluate(
        "fetch(document.querySelector('link[rel=manifest]').href).then((r) => r.json())")
    assert manifest["display"] == "standalone" and manifest["start_url"] == "./"
    sizes = {icon["sizes"] for icon in manifest["icons"]}
    assert {"192x192", "512x512"} <= sizes
    # The service worker keeps the app shell for offline starts.
    scope = await page.evaluate("navigator.serviceWorker.ready.then((r) => r.scope)")
    assert scope == server.url + "/app/"
    cached = await page.evaluate(
        "caches.open('relaybox-shell-v1').then((c) => c.keys()).then((k) => k.map((r) => r.url))")
    assert server.url + "/sdk/relaybox.js" in cached


async def test_a_second_device_pairs_with_the_first_ones_code(server: Server, browser: Any,
                                                              guard: Guard) -> None:
    first = await new_page(browser, guard)
    acct = account(server)
    await pair_page(first, server, acct.name)
    await first.click("#tab-devices")
    await first.click("#add-device")
    await expect(first.locator("#invite-link")).to_contain_text("/app/#pair=")
    link = await first.locator("#invite-link").text_content()
    second = await new_page(browser, guard, viewport=DESKTOP)
    await second.goto(str(link))
    await expect(second.locator("#pair-invite")).to_contain_text(
        f"device of {acct.name} (invited by ")
    await second.fill("#pair-name", "desk")
    await second.click("#pair-submit")
    await expect(second.locator("#status")).to_have_text("Connected", timeout=15_000)
    # The first page sees the new device come online (sys.devices, presence).
    await expect(first.locator("#device-list li", has_text="desk")).to_be_visible()
    await expect(first.locator("#device-list li", has_text="desk").locator(".dot.online")
                 ).to_be_visible()
    # Renamed from the second page: the first one shows the new name.
    await second.click("#tab-device")
    await second.fill("#rename-input", "desk-2")
    await second.click("#rename-form button")
    await expect(first.locator("#device-list li", has_text="desk-2")).to_be_visible()
    # Forget: revoked on the server, the key gone from the browser.
    second.once("dialog", lambda d: d.accept())
    await second.click("#forget")
    await expect(second.locator("#pair-view")).to_be_visible()
    assert await second.evaluate(
        "import('/sdk/relaybox.js').then((m) => m.loadIdentity(new m.IndexedDBStore()))"
    ) is None
    await expect(first.locator("#device-list li", has_text="desk-2")).to_contain_text("revoked")
    await first.context.close()
    await second.context.close()
