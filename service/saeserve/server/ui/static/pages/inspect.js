// Inspector (/inspect?model=&sae=&feature=&text=): a text's tokens coloured by one
// feature (or by each token's strongest feature), a panel with the hovered or focused
// token's top features and reconstruction error, and the features that fire most over
// the whole text. One Decompose call per run; the token row is built once.

import { getJson, listModels, postJson } from "../api.js";
import { clearError, featureUrl, fmt, h, initPage, markRendered, modelSelect, pickModel, showError, tokenLabel } from "../dom.js";
import { legend, tokenNavigation, tokenRow } from "../heat.js";
import { whyCard } from "../why.js";

const TOP_K = 8;
// Normalized MSE above which a token is marked as poorly reconstructed.
const POOR_MSE = 0.3;
const TEXT_IN_URL_MAX = 4000;
const N_LISTED = 20;
// Feature explanations already fetched, by "model/sae/id".
const explanations = new Map();

const main = initPage();
const params = new URLSearchParams(location.search);
main.append(h("h1", {}, "Inspector"));

const form = h("form", { class: "panel card", id: "inspect-form" });
const results = h("div", { id: "results" });
main.append(form, results);

let models = [];
try {
  models = await listModels();
  buildForm();
  if (params.get("text")) await run();
} catch (err) {
  showError(main, err);
}
markRendered();

function buildForm() {
  const model = pickModel(models, params.get("model"));
  const modelBox = modelSelect(models, model);
  const saeBox = h("select", { id: "sae", name: "sae" });
  const fillSaes = () => {
    const chosen = pickModel(models, modelBox.value);
    saeBox.replaceChildren(...chosen.saes.map((s) => h("option", { value: s.id, selected: s.id === params.get("sae") }, `${s.id} (${s.hook_point})`)));
  };
  modelBox.addEventListener("change", fillSaes);
  fillSaes();
  form.append(
    h("label", { for: "text" }, "Text"),
    h("textarea", { id: "text", name: "text", rows: 5, required: true, placeholder: "Paste a text to see its features token by token" }, params.get("text") || ""),
    h(
      "div",
      { class: "row" },
      h("label", {}, "Model", modelBox),
      h("label", {}, "SAE", saeBox),
      h("label", {}, "Colour by feature (empty: strongest)", h("input", { id: "feature", name: "feature", type: "number", min: 0, value: params.get("feature") || "" })),
      h("button", { type: "submit", id: "run" }, "Inspect"),
    ),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    run();
  });
}

function formState() {
  const data = new FormData(form);
  const feature = String(data.get("feature") || "").trim();
  return { model: data.get("model"), sae: data.get("sae"), text: String(data.get("text") || ""), feature: feature === "" ? null : Number(feature) };
}

async function run() {
  const state = formState();
  clearError(main);
  if (!state.text.trim()) return;
  const url = new URLSearchParams({ model: state.model, sae: state.sae });
  if (state.feature !== null) url.set("feature", state.feature);
  if (state.text.length <= TEXT_IN_URL_MAX) url.set("text", state.text);
  history.replaceState(null, "", `?${url}`);
  const button = document.getElementById("run");
  button.disabled = true;
  results.replaceChildren(h("p", { class: "note" }, "Decomposing…"));
  try {
    const response = await postJson("/v1/decompose", {
      model: state.model,
      texts: [state.text],
      saes: [state.sae],
      top_k: TOP_K,
      feature_ids: state.feature === null ? [] : [state.feature],
    });
    performance.mark("saeserve:decomposed");
    await render(response.texts[0], state);
  } catch (err) {
    results.replaceChildren();
    showError(main, err);
  } finally {
    button.disabled = false;
  }
}

// Resolves once the listed features' explanations are filled in.
async function render(text, state) {
  const sae = text.saes[0];
  const tokens = text.tokens.strings;
  const n = tokens.length;
  const k = sae.top_k;
  // Colour: the chosen feature's dense values, or each token's strongest value.
  const values = state.feature === null ? tokens.map((_, t) => sae.top_values[t * k] || 0) : sae.dense_values.slice(0, n);
  const max = Math.max(0, ...values);
  const label = state.feature === null ? "strongest feature" : `feature ${state.feature}`;
  const row = tokenRow(tokens, values, max, { label, lineBreaks: true });
  row.id = "tokens";
  sae.token_mse.forEach((mse, t) => {
    if (mse > POOR_MSE) row.children[t].classList.add("poor");
  });

  const panel = h("aside", { class: "card token-panel", id: "token-panel", "aria-live": "polite" }, h("p", { class: "note" }, "Hover or focus a token (arrow keys move; Enter or click pins it) to see its top features."));
  let pinned = null;
  const show = (tok) => {
    if (pinned && tok !== pinned) return;
    panel.replaceChildren(...tokenDetails(Number(tok.dataset.i), text, sae, state));
  };
  tokenNavigation(row, show, (tok) => {
    if (pinned) pinned.classList.remove("pinned");
    pinned = pinned === tok ? null : tok;
    if (pinned) pinned.classList.add("pinned");
    panel.replaceChildren(...tokenDetails(Number(tok.dataset.i), text, sae, state));
  });

  const ev = sae.explained_variance;
  results.replaceChildren(
    h(
      "p",
      { class: "summary" },
      `${n} tokens · SAE ${sae.sae} at ${sae.hook_point}`,
      ev === undefined || ev === null ? "" : ` · explained variance ${fmt(ev)}`,
      ` · tokens with reconstruction error > ${POOR_MSE} are underlined wavy`,
    ),
    legend(max, label),
    h("div", { class: "inspect-layout" }, h("section", { class: "card", "aria-label": "Tokens" }, row), panel),
    topFeatures(sae, n, state),
    whyCard(state),
  );
  await Promise.all(Array.from(results.querySelectorAll("#top-features .feature-label"), (cell) => explain(cell, state.model, sae.sae, Number(cell.dataset.feature))));
}

async function explain(cell, model, sae, id) {
  const key = `${model}/${sae}/${id}`;
  if (!explanations.has(key)) {
    try {
      const info = await getJson(`/v1/saes/${encodeURIComponent(sae)}/features/${id}`, { model });
      explanations.set(key, info.explanation ? info.explanation.text : "");
    } catch {
      explanations.set(key, ""); // the table still lists the feature without a label
    }
  }
  cell.textContent = explanations.get(key);
}

function tokenDetails(t, text, sae, state) {
  const k = sae.top_k;
  const token = text.tokens.strings[t];
  const mse = sae.token_mse[t];
  const quality = mse === undefined ? null : mse > POOR_MSE ? "poor" : mse > POOR_MSE / 3 ? "fair" : "good";
  const items = [];
  for (let j = 0; j < k; j++) {
    const value = sae.top_values[t * k + j];
    if (!(value > 0)) break;
    const id = sae.top_ids[t * k + j];
    const label = explanations.get(`${state.model}/${sae.sae}/${id}`);
    items.push(h("li", {}, h("a", { href: featureUrl(sae.sae, id, state.model) }, `#${id}`), ` ${fmt(value)} `, colourButton(id), label ? h("div", { class: "note" }, label) : null));
  }
  return [
    h("h2", {}, h("code", {}, JSON.stringify(tokenLabel(token)))),
    h("p", { class: "note" }, `token ${t} · id ${text.tokens.ids[t]} · bytes ${text.tokens.byte_starts[t]}–${text.tokens.byte_ends[t]}`),
    quality ? h("p", {}, "Reconstruction error ", h("span", { class: "quality" }, `${fmt(mse)} (${quality})`)) : null,
    state.feature === null ? null : h("p", {}, `Feature ${state.feature}: ${fmt(sae.dense_values[t])}`),
    items.length ? h("ol", {}, items) : h("p", { class: "note" }, "No active features."),
  ];
}

function colourButton(id) {
  return h("button", { type: "button", class: "link", onclick: () => colourBy(id), "aria-label": `colour the text by feature ${id}` }, "colour");
}

function colourBy(id) {
  document.getElementById("feature").value = id;
  run();
}

// Features over the whole text: in how many tokens' top-k each is active, and its max.
function topFeatures(sae, n, state) {
  const k = sae.top_k;
  const stats = new Map();
  for (let i = 0; i < n * k; i++) {
    const value = sae.top_values[i];
    if (!(value > 0)) continue;
    const id = sae.top_ids[i];
    const s = stats.get(id) || { count: 0, max: 0 };
    s.count += 1;
    s.max = Math.max(s.max, value);
    stats.set(id, s);
  }
  const ranked = [...stats.entries()].sort((a, b) => b[1].count - a[1].count || b[1].max - a[1].max).slice(0, N_LISTED);
  return h(
    "section",
    { class: "card" },
    h("h2", {}, "Features that fire most over the text"),
    h("p", { class: "note" }, `Counted over each token's top ${k}.`),
    h(
      "div",
      { class: "scroll" },
      h(
        "table",
        { id: "top-features" },
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "feature"), h("th", { scope: "col", class: "num" }, "tokens"), h("th", { scope: "col", class: "num" }, "max"), h("th", { scope: "col" }, ""))),
        h(
          "tbody",
          {},
          ranked.map(([id, s]) =>
            h(
              "tr",
              {},
              h("td", { class: "feature-cell" }, h("a", { href: featureUrl(sae.sae, id, state.model) }, `#${id}`), h("div", { class: "note feature-label", dataset: { feature: id } })),
              h("td", { class: "num" }, s.count),
              h("td", { class: "num" }, fmt(s.max)),
              h("td", {}, colourButton(id)),
            ),
          ),
        ),
      ),
    ),
  );
}
