"""The feature page shows the GetFeature answer: its contexts with the max token marked,
the histogram's bins, the logit effects; finds the model by SAE id when the URL names
none; and links to its neighbours, the playground and the inspector."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from selenium.webdriver.common.keys import Keys

from tests.conftest import Server
from tests.ui.conftest import Browser, call_api

pytestmark = pytest.mark.slow


def test_feature_page_shows_the_api_answer(browser: Browser, server: Server) -> None:
    status, info = call_api(server, "/v1/saes/resid_post.2/features/1224?model=demo")
    assert status == 200
    browser.open("/saes/resid_post.2/features/1224")  # no ?model=: demo has resid_post.2
    contexts = browser.js(
        """return Array.from(document.querySelectorAll('.context .tokens'), row => ({
             tokens: Array.from(row.children, t => t.textContent),
             values: Array.from(row.children, t => Number(t.dataset.value)),
             max: Array.from(row.children).findIndex(t => t.classList.contains('max'))}))"""
    )
    assert len(contexts) == len(info["top_contexts"])
    for shown, context in zip(contexts, info["top_contexts"], strict=True):
        assert shown["values"] == pytest.approx(context["values"], abs=1e-6)
        assert shown["max"] == context["max_index"]
        assert len(shown["tokens"]) == len(context["tokens"])
    bars = browser.js("return document.querySelectorAll('svg.hist .bar').length")
    assert bars == len(info["histogram"]["counts"])
    promoted = browser.js(
        "return Array.from(document.querySelectorAll('.effects-list')[0].querySelectorAll('code'),"
        " c => JSON.parse(c.textContent))"
    )
    assert promoted == [t["token"] for t in info["top_promoted"]]
    assert (
        browser.js("return document.querySelector('.explanation').textContent")
        == (info["explanation"]["text"])
    )

    links = {
        a.get_attribute("textContent"): a.get_attribute("href")
        for a in browser.driver.find_elements("css selector", "main a")
    }
    assert urlsplit(links["← 1223"]).path == "/saes/resid_post.2/features/1223"
    assert parse_qs(urlsplit(links["1225 →"]).query) == {"model": ["demo"]}
    steer = parse_qs(urlsplit(links["Steer with this feature"]).query)
    assert steer["iv"][0].startswith("resid_post.2:1224:add:")
    inspect = parse_qs(urlsplit(links["Colour a text by it"]).query)
    assert inspect == {"model": ["demo"], "sae": ["resid_post.2"], "feature": ["1224"]}

    # keyboard: the first context's max token takes focus; arrows move and read out values
    first = browser.driver.find_element("css selector", ".context .tok[tabindex='0']")
    first.send_keys(Keys.ARROW_RIGHT)
    focused = browser.js("return document.activeElement.dataset.i")
    assert focused == str(info["top_contexts"][0]["max_index"] + 1)
    assert "activation" in browser.js("return document.querySelector('.readout').textContent")
    assert browser.console_errors() == []


def test_unknown_feature_shows_the_api_message(browser: Browser, server: Server) -> None:
    status, body = call_api(server, "/v1/saes/resid_post.2/features/999999?model=demo")
    assert status == 404
    browser.open("/saes/resid_post.2/features/999999?model=demo")
    assert (
        browser.js("return document.querySelector('.error').textContent")
        == (body["error"]["message"])
    )
