"""The inspector's "Why this next token?" card shows what POST /v1/attribute answers."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.conftest import Server
from tests.ui.conftest import Browser, call_api

TEXT = "She said that Elizabeth was in the"
SAE = "resid_post.2"

pytestmark = pytest.mark.slow


def test_why_card_lists_the_api_attribution(browser: Browser, server: Server) -> None:
    status, want = call_api(
        server, "/v1/attribute", {"model": "demo", "prompt": TEXT, "saes": [SAE], "top_n": 8}
    )
    assert status == 200, want
    browser.open(f"/inspect?model=demo&sae={SAE}&text={quote(TEXT)}")
    browser.wait_for("document.getElementById('why-run') !== null")
    browser.js("document.getElementById('why-run').click()")
    browser.wait_for("document.querySelector('#why-features tbody tr') !== null")
    sae = want["saes"][0]
    expected = [e["feature"] for e in sae["top_total_positive"] + sae["top_total_negative"]]
    shown = browser.js(
        "return Array.from(document.querySelectorAll('#why-features tbody tr'), "
        "r => Number(r.dataset.feature))"
    )
    assert shown == expected and expected
    token = browser.js("return document.getElementById('why-token').textContent")
    assert want["target"]["token"] in token
    assert browser.console_errors() == []
