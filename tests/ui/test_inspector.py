"""The inspector colours each token by the Decompose API's value for the chosen feature,
its token panel (reached by keyboard) lists the API's top features for that token, and
its whole-text panel lists the InspectFeatures API's features."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from selenium.webdriver.common.keys import Keys

from tests.conftest import Server
from tests.ui.conftest import Browser, call_api

TEXT = "She said that Elizabeth would come to the ball, and Mr Darcy laughed."
SAE = "resid_post.1"
DARKEST = "rgb(8, 48, 107)"  # the top of the colour scale (heat.js BLUES)

pytestmark = pytest.mark.slow


def decompose(server: Server, **fields: object) -> dict:
    status, body = call_api(
        server, "/v1/decompose", {"model": "demo", "texts": [TEXT], "saes": [SAE], **fields}
    )
    assert status == 200, body
    return body["texts"][0]


def test_inspector_colours_tokens_with_the_api_values(browser: Browser, server: Server) -> None:
    top = decompose(server, top_k=8)
    k = top["saes"][0]["top_k"]
    feature = top["saes"][0]["top_ids"][2 * k]  # the strongest feature of the third token
    expected = decompose(server, top_k=8, feature_ids=[feature])
    values = expected["saes"][0]["dense_values"]
    assert sum(v > 0 for v in values) >= 2  # the check below compares a real spread

    browser.open(f"/inspect?model=demo&sae={SAE}&feature={feature}&text={quote(TEXT)}")
    shown = browser.js(
        """return Array.from(document.querySelectorAll('#tokens .tok'), t => ({
             value: Number(t.dataset.value), background: t.style.backgroundColor,
             text: t.textContent, title: t.title}))"""
    )
    assert [t["text"] for t in shown] == [
        s.replace("\n", "↵\n").replace("\t", "⇥") for s in expected["tokens"]["strings"]
    ]
    assert [t["value"] for t in shown] == pytest.approx(values, abs=1e-6)
    for token, value in zip(shown, values, strict=True):
        assert (token["background"] == "") == (value <= 0)
    strongest = max(range(len(values)), key=values.__getitem__)
    assert shown[strongest]["background"] == DARKEST
    # colour darkens with the value: the sum of the channels never rises
    active = sorted((v, shown[i]["background"]) for i, v in enumerate(values) if v > 0)
    sums = [sum(int(c) for c in bg[4:-1].split(",")) for _, bg in active]
    assert sums == sorted(sums, reverse=True)
    assert f"feature {feature}" in shown[strongest]["title"]

    # keyboard: focus the first token, move right twice; the panel shows token 2's features
    browser.js("document.querySelector('#tokens .tok').focus()")
    active_el = browser.driver.switch_to.active_element
    active_el.send_keys(Keys.ARROW_RIGHT)
    browser.driver.switch_to.active_element.send_keys(Keys.ARROW_RIGHT)
    assert browser.js("return document.activeElement.dataset.i") == "2"
    listed = browser.js(
        "return Array.from(document.querySelectorAll('#token-panel ol a'), a => a.textContent)"
    )
    ids, vals = (
        top["saes"][0]["top_ids"][2 * k : 3 * k],
        top["saes"][0]["top_values"][2 * k : 3 * k],
    )
    assert listed == [f"#{i}" for i, v in zip(ids, vals, strict=True) if v > 0]

    # the whole-text panel is the InspectFeatures answer: ids and active-token counts
    status, activity = call_api(
        server, "/v1/inspect", {"model": "demo", "text": TEXT, "saes": [SAE], "top_n": 20}
    )
    assert status == 200, activity
    rows = browser.js(
        """return Array.from(document.querySelectorAll('#top-features tbody tr'), r =>
             [r.querySelector('a').textContent, Number(r.children[1].textContent)])"""
    )
    want = [[f"#{f['feature']}", f["count"]] for f in activity["saes"][0]["features"]]
    assert rows == want and len(rows) == 20
    assert browser.console_errors() == []


def test_contrast_page_lists_the_api_features(browser: Browser, server: Server) -> None:
    set_a = ['"I am sure of it," said Elizabeth.', "She cried, and replied that she was happy."]
    set_b = ["The function returns the value of x.", "Run make install in the build directory."]
    status, body = call_api(
        server,
        "/v1/contrast",
        {"model": "demo", "saes": ["resid_post.2"], "texts_a": set_a, "texts_b": set_b,
         "unit": "CONTRAST_UNIT_TEXT_MAX", "order_by": "CONTRAST_ORDER_AUROC", "top_n": 15},
    )  # fmt: skip
    assert status == 200, body
    a, b = quote("\n".join(set_a)), quote("\n".join(set_b))
    browser.open(
        "/contrast?model=demo&sae=resid_post.2&unit=CONTRAST_UNIT_TEXT_MAX"
        f"&order=CONTRAST_ORDER_AUROC&a={a}&b={b}"
    )
    for side, table in (("more_in_a", "more-in-a"), ("more_in_b", "more-in-b")):
        shown = browser.js(
            f"return Array.from(document.querySelectorAll('#{table} tbody tr a'),"
            " a => [a.textContent, a.getAttribute('href')])"
        )
        want = body["saes"][0][side]
        assert want, side  # the page shows a real ranking
        assert shown == [
            [f"#{r['feature']}", f"/saes/resid_post.2/features/{r['feature']}?model=demo"]
            for r in want
        ]
    assert browser.console_errors() == []
