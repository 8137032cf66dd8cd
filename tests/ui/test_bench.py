"""Bench rows, not timed tests: how long the inspector takes to draw a 2,000-token text
and the feature page 50 contexts, and how long a hover or an arrow key takes there.

The demo model holds 256 positions and the test server allows 48 tokens per text, so
the page's fetch of /v1/decompose and /v1/inspect (or GetFeature) answers a synthetic response of that
size, made in the page; everything else (models, the page's own code) is the real
server's. Run with ``-s`` to see the rows.
"""

from __future__ import annotations

import pytest

from tests.ui.conftest import Browser

N_TOKENS = 2000
N_CONTEXTS = 50
CONTEXT_TOKENS = 64

# Replaces fetch for the two big answers; the numbers are a fixed pseudo-random sequence.
FAKE_FETCH_BODY = """
  let seed = 1;
  const rand = () => {
    seed ^= seed << 13; seed ^= seed >>> 17; seed ^= seed << 5;  // xorshift32
    return (seed >>> 0) / 4294967296;
  };
  const words = ["the", " cat", " sat", " on", " a", " mat", ",", " and", "\\n", " Elizabeth"];
  const tokens = (n) => Array.from({ length: n }, () => words[Math.floor(rand() * words.length)]);
  const k = 8;
  function decompose(body) {
    const n = N_TOKENS, strings = tokens(n);
    const top_ids = [], top_values = [], dense = [];
    for (let t = 0; t < n; t++) {
      let v = 6 * rand();
      for (let j = 0; j < k; j++) { top_ids.push(Math.floor(rand() * 4096)); top_values.push(v); v *= 0.8; }
      for (const f of body.feature_ids) dense.push(rand() < 0.3 ? 5 * rand() : 0);
    }
    return { texts: [{ tokens: { ids: strings.map((_, i) => i), strings, byte_starts: strings.map((_, i) => i), byte_ends: strings.map((_, i) => i + 1) },
      saes: [{ sae: body.saes[0], hook_point: body.saes[0], top_k: k, top_ids, top_values, dense_values: dense,
               token_mse: strings.map(() => 0.4 * rand()), explained_variance: 0.9 }] }] };
  }
  function inspect(body) {
    const features = Array.from({ length: body.top_n }, (_, i) => ({ feature: Math.floor(rand() * 4096),
      count: N_TOKENS - 50 * i, max_activation: 6 * rand(), max_position: i, sum_activation: 1000, mean_over_tokens: 0.5,
      mean_over_active: 2 * rand(), positions: [i], values: [1] }));
    return { tokens: {}, saes: [{ sae: body.saes[0], hook_point: body.saes[0], active_features: 4096, features }] };
  }
  function feature(sae, id) {
    const contexts = Array.from({ length: N_CONTEXTS }, (_, c) => {
      const values = Array.from({ length: CONTEXT_TOKENS }, () => (rand() < 0.2 ? 3 * rand() : 0));
      const max_index = 10 + (c % 40);
      values[max_index] = 4 - c / 50;
      return { tokens: tokens(CONTEXT_TOKENS), values, max_index, max_value: values[max_index] };
    });
    return { feature: { sae, feature: id }, has_statistics: true, density: 0.01, max_activation: 4, mean_activation: 1,
      tokens_indexed: "300000", histogram: { bin_edges: Array.from({ length: 33 }, (_, i) => i / 8), counts: Array.from({ length: 32 }, (_, i) => String(1000 - 30 * i)) },
      top_contexts: contexts, top_promoted: [], top_suppressed: [], explanation: { text: "synthetic", source: "EXPLANATION_SOURCE_GENERATED" } };
  }
  const realFetch = window.fetch;
  window.fetch = async (url, init) => {
    const u = new URL(url, location.href);
    const answer = (body) => new Response(JSON.stringify(body), { headers: { "content-type": "application/json" } });
    if (u.pathname === "/v1/decompose") return answer(decompose(JSON.parse(init.body)));
    if (u.pathname === "/v1/inspect") return answer(inspect(JSON.parse(init.body)));
    const m = u.pathname.match(/^\\/v1\\/saes\\/([^/]+)\\/features\\/(\\d+)$/);
    if (m) return answer(feature(m[1], Number(m[2])));
    return realFetch(url, init);
  };
"""
FAKE_FETCH = (
    f"(() => {{ const N_TOKENS = {N_TOKENS}, N_CONTEXTS = {N_CONTEXTS},"
    f" CONTEXT_TOKENS = {CONTEXT_TOKENS};\n{FAKE_FETCH_BODY}}})();"
)

# Time of one synchronous event handler run, in ms.
TIME_EVENT = """
const [selector, index, make] = arguments;
const el = document.querySelectorAll(selector)[index];
const t0 = performance.now();
el.dispatchEvent(make === 'key' ? new KeyboardEvent('keydown', {key: 'ArrowRight', bubbles: true})
                                : new MouseEvent('mouseover', {bubbles: true}));
return performance.now() - t0;
"""

pytestmark = pytest.mark.slow


@pytest.fixture
def fake_big_answers(browser: Browser):
    added = browser.driver.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument", {"source": FAKE_FETCH}
    )
    yield
    browser.driver.execute_cdp_cmd(
        "Page.removeScriptToEvaluateOnNewDocument", {"identifier": added["identifier"]}
    )


def test_bench_inspector_2000_tokens(browser: Browser, fake_big_answers: None) -> None:
    browser.open("/inspect?model=demo&sae=resid_post.1&feature=7&text=synthetic")
    assert browser.js("return document.querySelectorAll('#tokens .tok').length") == N_TOKENS
    draw = browser.js(
        "return performance.getEntriesByName('saeserve:rendered').at(-1).startTime"
        " - performance.getEntriesByName('saeserve:decomposed').at(-1).startTime"
    )
    hover = browser.js(TIME_EVENT, "#tokens .tok", 1500, "mouse")
    browser.js("document.querySelectorAll('#tokens .tok')[1500].focus()")
    key = browser.js(TIME_EVENT, "#tokens .tok", 1500, "key")
    assert browser.js("return document.activeElement.dataset.i") == "1501"
    assert browser.console_errors() == []
    print(
        f"\n[ui bench] inspector {N_TOKENS} tokens: page load to rendered {browser.rendered_ms():.0f} ms,"
        f" draw {draw:.0f} ms, hover {hover:.1f} ms, arrow key {key:.1f} ms"
    )


def test_bench_feature_page_50_contexts(browser: Browser, fake_big_answers: None) -> None:
    browser.open("/saes/resid_post.1/features/7?model=demo")
    assert browser.js("return document.querySelectorAll('.context').length") == N_CONTEXTS
    hover = browser.js(TIME_EVENT, ".contexts .tok", 40 * CONTEXT_TOKENS, "mouse")
    assert browser.console_errors() == []
    print(
        f"\n[ui bench] feature page {N_CONTEXTS} contexts x {CONTEXT_TOKENS} tokens:"
        f" page load to rendered {browser.rendered_ms():.0f} ms, hover {hover:.1f} ms"
    )
