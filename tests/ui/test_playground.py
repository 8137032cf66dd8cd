"""The steering playground streams the steered and baseline continuations side by side
from one /v1/generate call, and shows the API's own message for a bad intervention."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Server
from tests.ui.conftest import WIDTHS, Browser, call_api

PROMPT = "The function returns"
RUN = (
    "/steer?model=demo&prompt=The%20function%20returns&iv=resid_post.2:1224:add:{value}:all"
    "&n=16&temp=0&top_p=1&top_k=0&seed=1&baseline=1"
)

pytestmark = pytest.mark.slow


def generate(browser: Browser, value: float) -> str:
    browser.open(RUN.format(value=value))
    browser.driver.find_element("id", "generate").click()
    browser.wait_for("['done', 'error'].includes(document.getElementById('output').dataset.state)")
    return str(browser.js("return document.getElementById('output').dataset.state"))


def column_tokens(browser: Browser, column: str) -> list[dict]:
    return list(
        browser.js(
            f"return Array.from(document.querySelectorAll('#{column}-text .tok'),"
            " t => ({text: t.textContent, title: t.title}))"
        )
    )


def test_playground_streams_both_columns_and_steering_changes_the_text(browser: Browser) -> None:
    assert generate(browser, 16) == "done"
    steered, baseline = column_tokens(browser, "steered"), column_tokens(browser, "baseline")
    assert len(steered) == 16 and len(baseline) == 16
    assert "".join(t["text"] for t in steered) != "".join(t["text"] for t in baseline)
    assert all("logprob" in t["title"] and "alternatives" in t["title"] for t in steered)
    # the steered feature is tracked: in each tooltip, and colouring the tokens by default
    assert all("resid_post.2/1224 " in t["title"] for t in steered + baseline)
    assert browser.js("return document.getElementById('colour-by').value") == "0"
    coloured = browser.js(
        "return Array.from(document.querySelectorAll('.stream .tok'), t => ["
        " Number(t.dataset.tracked), t.style.backgroundColor !== ''])"
    )
    assert len(coloured) == 32 and any(value > 0 for value, _ in coloured)
    assert all((value > 0) == has_colour for value, has_colour in coloured)
    for column in ("steered", "baseline"):
        finish = browser.js(f"return document.getElementById('{column}-finish').textContent")
        assert finish.startswith("finished: length · 16 tokens")
    assert browser.console_errors() == []
    assert browser.foreign_requests() == []
    browser.js("document.querySelector('#steered-text .tok:nth-of-type(3)').focus()")
    for width in WIDTHS.values():
        browser.screenshot("steer", width)


def test_bad_intervention_shows_the_api_message(browser: Browser, server: Server) -> None:
    too_strong = 5000  # over the test server's limits.max_abs_intervention_value
    assert generate(browser, too_strong) == "error"
    shown = browser.js("return document.querySelector('.error').textContent")
    status, body = call_api(
        server,
        "/v1/generate",
        {
            "model": "demo",
            "prompt": PROMPT,
            "sampling": {"max_new_tokens": 16, "temperature": 0},
            "interventions": [
                {
                    "mode": "INTERVENTION_MODE_ADD",
                    "sae": "resid_post.2",
                    "feature": 1224,
                    "value": too_strong,
                }
            ],
            "include_baseline": True,
        },
    )
    assert status == 400, body
    assert shown == body["error"]["message"]
    assert str(too_strong) in shown


def test_the_form_round_trips_through_the_url(browser: Browser, server: Server) -> None:
    browser.open(RUN.format(value=16))
    browser.driver.find_element("id", "add-iv").click()
    feature_box = browser.driver.find_elements("css selector", ".intervention .feature")[1]
    feature_box.send_keys("said")  # not an id: the box searches the row's SAE
    browser.wait_for("document.querySelectorAll('.intervention datalist')[1].options.length > 0")
    suggested = browser.js(
        "return Array.from(document.querySelectorAll('.intervention datalist')[1].options,"
        " o => Number(o.value))"
    )
    status, body = call_api(
        server, "/v1/features/search?q=said&sae=resid_post.1&model=demo&limit=10"
    )
    assert status == 200
    assert suggested == [m["feature"]["feature"] for m in body["matches"]]
    feature_box.clear()
    feature_box.send_keys(str(suggested[0]))
    browser.js(
        """const row = document.querySelectorAll('.intervention')[1];
           const set = (cls, value, event) => {
             const el = row.querySelector(cls);
             el.value = value;
             el.dispatchEvent(new Event(event));
           };
           set('.mode', 'clamp', 'change');
           set('.strength', '3.5', 'input');
           set('.positions', 'indices', 'change');
           set('.indices', '0,2', 'input');
           document.getElementById('n').value = '7';"""
    )
    browser.driver.find_element("id", "copy-link").click()
    read_form = (
        "return Array.from(document.querySelectorAll('#steer-form input, #steer-form select,"
        " #steer-form textarea'), e => ['checkbox', 'radio'].includes(e.type) ? e.checked : e.value)"
    )
    before = browser.js(read_form)
    link = browser.js("return location.pathname + location.search")
    assert "iv=resid_post.1%3A" in link and "%3Aclamp%3A3.5%3Aindices%3A0%2C2" in link
    browser.open(link)
    assert browser.js(read_form) == before


def test_chat_messages_on_a_model_with_a_chat_template(browser: Browser) -> None:
    browser.open("/steer?model=tiny&msg=system:Be%20brief.&msg=user:Hello&n=4&temp=0&baseline=0")
    assert browser.js("return document.querySelectorAll('#messages .message').length") == 2
    browser.driver.find_element("id", "generate").click()
    browser.wait_for("['done', 'error'].includes(document.getElementById('output').dataset.state)")
    assert browser.js("return document.getElementById('output').dataset.state") == "done"
    assert browser.js("return document.querySelectorAll('#steered-text .tok').length") == 4
    assert browser.js("return document.getElementById('baseline')") is None


def test_an_intervention_without_a_feature_id_is_not_sent(browser: Browser) -> None:
    browser.open(RUN.format(value=16))
    feature_box = browser.driver.find_element("css selector", ".intervention .feature")
    feature_box.clear()
    feature_box.send_keys("she")  # words to search, no match picked
    browser.driver.find_element("id", "generate").click()
    shown = browser.js("return document.querySelector('.error').textContent")
    assert shown.startswith("Intervention 1: the feature must be an id")
    assert browser.js("return document.getElementById('output').dataset.state") is None


def test_conditions_steer_where_a_feature_fires_and_stop_each_column(
    browser: Browser, server: Server
) -> None:
    when = "resid_post.1:2485%3E1"  # fires on sentence-ending periods
    browser.open(RUN.format(value=16).replace(":all&", f":all@{when}&", 1) + f"&stop_when={when}")
    assert browser.js("return document.querySelector('.intervention .when').value") == (
        "resid_post.1:2485>1"
    )
    browser.driver.find_element("id", "generate").click()
    browser.wait_for("['done', 'error'].includes(document.getElementById('output').dataset.state)")
    assert browser.js("return document.getElementById('output').dataset.state") == "done"
    condition = {"sae": "resid_post.1", "feature": 2485, "threshold": 1}
    status, body = call_api(
        server,
        "/v1/generate",
        {
            "model": "demo",
            "prompt": PROMPT,
            "sampling": {"max_new_tokens": 16, "temperature": 0, "seed": "1"},
            "interventions": [
                {
                    "mode": "INTERVENTION_MODE_ADD",
                    "sae": "resid_post.2",
                    "feature": 1224,
                    "value": 16,
                    "condition": condition,
                }
            ],
            "stop_conditions": [condition],
            "include_baseline": True,
        },
    )
    assert status == 200, body
    events = [
        json.loads(line.removeprefix("data: "))
        for line in body.splitlines()
        if line.startswith("data: {")
    ]
    for column, variant in (("steered", "VARIANT_STEERED"), ("baseline", "VARIANT_BASELINE")):
        chunks = [c for c in events if c["variant"] == variant]
        shown = "".join(t["text"] for t in column_tokens(browser, column))
        assert shown == "".join(c["text"] for c in chunks)
        assert chunks[-1]["finish_reason"] == "FINISH_REASON_CONDITION"
        finish = browser.js(f"return document.getElementById('{column}-finish').textContent")
        assert finish.startswith("finished: condition (stop when #1: ")
    assert browser.console_errors() == []
