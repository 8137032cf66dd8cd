// Home (/): the server's models and their SAEs (hook point, width, k, feature-index
// coverage), with links into the feature pages, inspector, search and playground.

import { getJson, listModels } from "../api.js";
import { featureUrl, h, initPage, markRendered, showError } from "../dom.js";

const ARCH = { SAE_ARCHITECTURE_TOPK: "TopK", SAE_ARCHITECTURE_JUMPRELU: "JumpReLU", SAE_ARCHITECTURE_RELU: "ReLU" };

const main = initPage();
main.append(
  h("h1", {}, "Models and SAEs"),
  h(
    "p",
    { class: "lede" },
    "Look inside any prompt feature by feature, browse what each SAE feature fires on, and steer features while the model writes.",
  ),
);

const coverage = [];
try {
  const models = await listModels();
  models.forEach((model, i) => main.append(modelCard(model, i === 0)));
  await Promise.all(coverage);
} catch (err) {
  showError(main, err);
}
markRendered();

// "bfloat16 · 3.0 GiB": the dtype the replica holds the weights in and their size
function weightsText(sae) {
  const bytes = Number(sae.weight_bytes || 0); // int64: a string in proto JSON
  if (!sae.dtype || !bytes) return "–";
  const gib = bytes / 2 ** 30;
  const size = gib >= 1 ? `${gib.toFixed(1)} GiB` : `${(bytes / 2 ** 20).toFixed(1)} MiB`;
  return `${sae.dtype} · ${size}`;
}

function modelCard(model, isDefault) {
  const q = `?model=${encodeURIComponent(model.name)}`;
  const facts = [
    model.family,
    `${model.n_layers} layers`,
    `d_model ${model.d_model}`,
    `vocab ${model.vocab_size.toLocaleString()}`,
    `${model.max_positions} positions`,
    model.dtype,
    model.has_chat_template ? "chat template" : "no chat template",
  ];
  const rows = model.saes.map((sae) => {
    const cell = h("td", { "data-label": "feature index" }, sae.has_feature_index ? "indexed" : "no index");
    if (sae.has_feature_index) coverage.push(fillCoverage(cell, model.name, sae.id));
    const sq = `${q}&sae=${encodeURIComponent(sae.id)}`;
    return h(
      "tr",
      {},
      h("th", { scope: "row" }, sae.id),
      h("td", { "data-label": "hook point" }, sae.hook_point),
      h("td", { class: "num", "data-label": "width" }, sae.d_sae.toLocaleString()),
      h("td", { class: "num", "data-label": "k" }, sae.k || "–"),
      h("td", { "data-label": "type" }, ARCH[sae.architecture] || sae.architecture),
      h("td", { "data-label": "weights" }, weightsText(sae)),
      cell,
      h(
        "td",
        { class: "links" },
        h("a", { href: featureUrl(sae.id, 0, model.name) }, "features"),
        h("a", { href: `/inspect${sq}` }, "inspect"),
        sae.has_feature_index ? h("a", { href: `/search${sq}` }, "search") : null,
      ),
    );
  });
  return h(
    "section",
    { class: "card", "aria-labelledby": `model-${model.name}` },
    h(
      "h2",
      { id: `model-${model.name}` },
      model.name,
      isDefault ? h("span", { class: "badge" }, "default") : null,
    ),
    h("p", { class: "facts" }, facts.join(" · ")),
    h(
      "div",
      { class: "scroll" },
      h(
        "table",
        { class: "sae-table" },
        h(
          "thead",
          {},
          h("tr", {}, ["SAE", "hook point", "width", "k", "type", "weights", "feature index", ""].map((c) => h("th", { scope: "col", class: c === "width" || c === "k" ? "num" : null }, c))),
        ),
        h("tbody", {}, rows),
      ),
    ),
    h(
      "p",
      { class: "links" },
      h("a", { href: `/inspect${q}` }, "Inspect a text"),
      h("a", { href: `/search${q}` }, "Search features"),
      h("a", { href: `/steer${q}` }, "Steering playground"),
    ),
  );
}

// Index coverage (tokens the statistics were computed over) comes with any feature's answer.
async function fillCoverage(cell, model, sae) {
  try {
    const feature = await getJson(`/v1/saes/${encodeURIComponent(sae)}/features/0`, { model });
    cell.textContent = `${Number(feature.tokens_indexed).toLocaleString()} tokens`;
  } catch {
    cell.textContent = "indexed";
  }
}
