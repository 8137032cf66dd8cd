"""Every page of the web UI loads in headless Chromium with no console error, no request
to another host, no error message, and no sideways scrolling at 1280 and 390 px.

Prints each page's load-to-rendered time (``-s`` shows it). With
``SAESERVE_UI_SCREENSHOTS=1`` it retakes docs/ui/{page}-{width}.png.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.conftest import KEY, Server
from tests.ui.conftest import WIDTHS, Browser, call_api

INSPECT_TEXT = (
    "She said that Elizabeth would come to the ball, and Mr Darcy laughed. Miss Bennet smiled at"
    " her aunt."
)
PAGES = {
    "home": "/",
    "feature": "/saes/resid_post.2/features/1224?model=demo",
    # demo feature 1368 fires on names and titles ("Miss", "Colonel")
    "inspect": f"/inspect?model=demo&sae=resid_post.1&feature=1368&text={quote(INSPECT_TEXT)}",
    "contrast": "/contrast?model=demo&sae=resid_post.2&unit=CONTRAST_UNIT_TEXT_MAX&a="
    + quote('"I am sure of it," said Elizabeth.\nShe cried, and replied that she was very happy.')
    + "&b="
    + quote("The function returns the value of x.\nRun make install in the build directory."),
    "search": "/search?model=demo&q=said",
    # the playground's screenshots are taken after a run, by test_playground
    "steer": "/steer?model=demo&prompt=The%20function%20returns&iv=resid_post.2:1224:add:16:all",
}
# Run before a screenshot, to show what a hover or a click shows.
BEFORE_SCREENSHOT = {"inspect": "document.querySelectorAll('#tokens .tok')[4].click()"}

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("width", WIDTHS.values(), ids=WIDTHS.keys())
@pytest.mark.parametrize("page", PAGES)
def test_page_loads_clean(browser: Browser, page: str, width: int) -> None:
    browser.open(PAGES[page], width)
    errors = browser.js(
        "return Array.from(document.querySelectorAll('.error'), e => e.textContent)"
    )
    assert errors == []
    assert browser.console_errors() == []
    assert browser.foreign_requests() == []
    assert browser.js("return document.documentElement.scrollWidth <= window.innerWidth")
    print(
        f"\n[ui bench] {page} at {width}px: rendered {browser.rendered_ms():.0f} ms after navigation"
    )
    if page != "steer":
        if page in BEFORE_SCREENSHOT:
            browser.js(BEFORE_SCREENSHOT[page])
        browser.screenshot(page, width)


def test_pages_load_without_a_key_and_show_the_api_message(
    browser: Browser, server: Server
) -> None:
    status, body = call_api(server, "/v1/models", key=None)
    assert status == 401
    browser.js("localStorage.removeItem('saeserve.apiKey')")
    try:
        browser.open("/search?model=demo&q=said")
        shown = browser.js("return document.querySelector('.error').textContent")
    finally:
        browser.js("localStorage.setItem('saeserve.apiKey', arguments[0])", KEY)
    assert shown.startswith(body["error"]["message"])
