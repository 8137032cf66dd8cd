// Inspector (/inspect?model=&sae=&feature=&text=): a text's tokens coloured by one
// feature (or by each token's strongest feature), a panel with the hovered or focused
// token's top features and reconstruction error, and the features that fire most over
// the whole text (InspectFeatures: exact over all of the SAE's features, not only each
// token's top k). One Decompose and one InspectFeatures call per run, side by side.

import { getJson, listModels, postJson } from "../api.js";
import { clearError, featureUrl, fmt, h, initPage, markRendered, modelAndSaeSelects, showError, tokenLabel } from "../dom.js";
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
  const { modelBox, saeBox } = modelAndSaeSelects(models, params);
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
    const [response, activity] = await Promise.all([
      postJson("/v1/decompose", {
        model: state.model,
        texts: [state.text],
        saes: [state.sae],
        top_k: TOP_K,
        feature_ids: state.feature === null ? [] : [state.feature],
      }),
      postJson("/v1/inspect", { model: state.model, text: state.text, saes: [state.sae], top_n: N_LISTED, max_positions: 1 }),
    ]);
    performance.mark("saeserve:decomposed");
    await render(response.texts[0], activity.saes[0], state);
  } catch (err) {
    results.replaceChildren();
    showError(main, err);
  } finally {
    button.disabled = false;
  }
}

// Resolves once the listed features' explanations are filled in.
async function render(text, activity, state) {
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
    topFeatures(activity, n, state),
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

// Features over the whole text (the InspectFeatures answer): active tokens, max, mean
// over the active tokens, ranked by active tokens.
function topFeatures(activity, n, state) {
  return h(
    "section",
    { class: "card" },
    h("h2", {}, "Features that fire most over the text"),
    h("p", { class: "note" }, `${activity.active_features} features of ${activity.sae} are active somewhere in the ${n} tokens; counted over all of them, not only each token's top ${TOP_K}.`),
    h(
      "div",
      { class: "scroll" },
      h(
        "table",
        { id: "top-features" },
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "feature"), h("th", { scope: "col", class: "num" }, "tokens"), h("th", { scope: "col", class: "num" }, "max"), h("th", { scope: "col", class: "num" }, "mean when active"), h("th", { scope: "col" }, ""))),
        h(
          "tbody",
          {},
          activity.features.map((f) =>
            h(
              "tr",
              {},
              h("td", { class: "feature-cell" }, h("a", { href: featureUrl(activity.sae, f.feature, state.model) }, `#${f.feature}`), h("div", { class: "note feature-label", dataset: { feature: f.feature } })),
              h("td", { class: "num" }, f.count),
              h("td", { class: "num", title: `at token ${f.max_position}` }, fmt(f.max_activation)),
              h("td", { class: "num" }, fmt(f.mean_over_active)),
              h("td", {}, colourButton(f.feature)),
            ),
          ),
        ),
      ),
    ),
  );
}
