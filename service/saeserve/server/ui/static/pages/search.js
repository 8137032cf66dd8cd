// Search (/search?q=&sae=&model=&limit=): features whose explanations or top tokens match
// a query, ranked, each with its explanation, top tokens and a mini activation histogram
// (fetched per match, after the list is shown).

import { getJson, listModels } from "../api.js";
import { clearError, featureUrl, fmt, h, initPage, markRendered, modelSelect, pickModel, showError } from "../dom.js";
import { histogram } from "../histogram.js";

const main = initPage();
const params = new URLSearchParams(location.search);
main.append(h("h1", {}, "Search features"));
const form = h("form", { class: "panel card", id: "search-form", role: "search" });
const results = h("div", { id: "results" });
main.append(form, results);

let models = [];
try {
  models = await listModels();
  buildForm();
  if (params.get("q")) await run();
} catch (err) {
  showError(main, err);
}
markRendered();

function buildForm() {
  const model = pickModel(models, params.get("model"));
  const modelBox = modelSelect(models, model);
  const saeBox = h("select", { id: "sae", name: "sae" });
  const fillSaes = () => {
    const indexed = pickModel(models, modelBox.value).saes.filter((s) => s.has_feature_index);
    saeBox.replaceChildren(
      h("option", { value: "" }, "every indexed SAE"),
      ...indexed.map((s) => h("option", { value: s.id, selected: s.id === params.get("sae") }, s.id)),
    );
  };
  modelBox.addEventListener("change", fillSaes);
  fillSaes();
  form.append(
    h(
      "div",
      { class: "row" },
      h("label", {}, "Query", h("input", { id: "q", name: "q", type: "search", required: true, size: 28, value: params.get("q") || "", placeholder: "e.g. said, she, Python" })),
      h("label", {}, "Model", modelBox),
      h("label", {}, "SAE", saeBox),
      h("label", {}, "Results", h("input", { id: "limit", name: "limit", type: "number", min: 1, max: 100, value: params.get("limit") || 10 })),
      h("button", { type: "submit" }, "Search"),
    ),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    run();
  });
}

async function run() {
  const data = new FormData(form);
  const query = { q: String(data.get("q") || "").trim(), sae: data.get("sae"), model: data.get("model"), limit: data.get("limit") };
  clearError(main);
  if (!query.q) return;
  history.replaceState(null, "", `?${new URLSearchParams(query)}`);
  results.replaceChildren(h("p", { class: "note" }, "Searching…"));
  try {
    const response = await getJson("/v1/features/search", query);
    await render(response.matches, query.model);
  } catch (err) {
    results.replaceChildren();
    showError(main, err);
  }
}

// Resolves once every match's histogram is drawn.
async function render(matches, model) {
  if (!matches.length) {
    results.replaceChildren(h("p", {}, "No feature matches that query."));
    return;
  }
  const list = h("ol", { class: "matches", id: "matches" });
  const charts = [];
  for (const m of matches) {
    const chart = h("div", { class: "mini-hist", "aria-label": "activation histogram" });
    list.append(
      h(
        "li",
        { class: "match" },
        h(
          "div",
          {},
          h("a", { class: "title", href: featureUrl(m.feature.sae, m.feature.feature, model) }, `${m.feature.sae} / ${m.feature.feature}`),
          h("span", { class: "score", title: "relevance within this result list" }, `score ${fmt(m.score)}`),
          h("div", {}, m.explanation ? m.explanation.text : h("span", { class: "note" }, "no explanation")),
          h("div", { class: "chips", "aria-label": "top tokens" }, chips(m.top_tokens)),
        ),
        chart,
      ),
    );
    charts.push(fillHistogram(chart, m.feature, model));
  }
  results.replaceChildren(h("p", { class: "summary" }, `${matches.length} features`), list);
  await Promise.all(charts);
}

// Top tokens repeat (one per top context); show each once with its count.
function chips(tokens) {
  const counts = new Map();
  for (const t of tokens) counts.set(t, (counts.get(t) || 0) + 1);
  return [...counts].map(([t, n]) => h("span", { class: "chip" }, JSON.stringify(t), n > 1 ? ` ×${n}` : ""));
}

async function fillHistogram(where, feature, model) {
  try {
    const info = await getJson(`/v1/saes/${encodeURIComponent(feature.sae)}/features/${feature.feature}`, { model });
    if (!info.has_statistics) return;
    where.append(
      histogram(info.histogram.bin_edges, info.histogram.counts, { mini: true, label: `feature ${feature.feature} activations` }),
      h("div", { class: "note" }, `density ${fmt(info.density * 100)}% · max ${fmt(info.max_activation)}`),
    );
  } catch (err) {
    where.append(h("span", { class: "note" }, `histogram unavailable: ${err.message}`));
  }
}
