"""The feature page shows the GetFeature answer: its top contexts and quantile bands' sampled
contexts with the max token marked, the histogram's bins, the logit effects, the decoder-
and encoder-cosine neighbours as links; finds the model by SAE id when the URL names none;
and links to the previous and next features, the playground and the inspector."""

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
    assert_contexts_shown(browser, "#top-contexts", info["top_contexts"])
    bands = browser.driver.find_elements("css selector", "#quantiles .band")
    assert info["quantiles"] and len(bands) == len(info["quantiles"])
    for i, band in enumerate(info["quantiles"]):
        heading = bands[i].find_element("css selector", "h3").get_attribute("textContent")
        assert heading.startswith(f"Band {i + 1} of {len(bands)}: max activation")
        assert_contexts_shown(browser, f"#quantiles .band:nth-child({i + 1})", band["contexts"])
    for kind in ("decoder", "encoder"):
        expected = info[f"{kind}_neighbours"]
        shown = browser.js(
            "return Array.from(document.querySelectorAll('#neighbours .card')[arguments[0]]"
            ".querySelectorAll('li'), li => [li.querySelector('a').getAttribute('href'),"
            " Number(li.querySelector('.num').textContent)])",
            0 if kind == "decoder" else 1,
        )
        assert len(expected) == 10 and len(shown) == len(expected)
        for (href, cosine), neighbour in zip(shown, expected, strict=True):
            link = urlsplit(href)
            assert link.path == f"/saes/resid_post.2/features/{neighbour['feature']}"
            assert cosine == pytest.approx(neighbour["cosine"], abs=5e-3)  # shown rounded
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


def assert_contexts_shown(browser: Browser, section: str, contexts: list[dict]) -> None:
    """The context rows under the CSS selector ``section`` are ``contexts`` (API JSON)."""
    shown = browser.js(
        """return Array.from(document.querySelectorAll(arguments[0] + ' .context .tokens'),
             row => ({values: Array.from(row.children, t => Number(t.dataset.value)),
                      n: row.children.length,
                      max: Array.from(row.children).findIndex(t => t.classList.contains('max'))}))""",
        section,
    )
    assert len(shown) == len(contexts) > 0
    for row, context in zip(shown, contexts, strict=True):
        assert row["values"] == pytest.approx(context["values"], abs=1e-6)
        assert row["max"] == context["max_index"]
        assert row["n"] == len(context["tokens"])


def test_unknown_feature_shows_the_api_message(browser: Browser, server: Server) -> None:
    status, body = call_api(server, "/v1/saes/resid_post.2/features/999999?model=demo")
    assert status == 404
    browser.open("/saes/resid_post.2/features/999999?model=demo")
    assert (
        browser.js("return document.querySelector('.error').textContent")
        == (body["error"]["message"])
    )
