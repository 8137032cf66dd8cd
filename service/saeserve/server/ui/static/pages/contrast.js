// Contrast (/contrast?model=&sae=&unit=&order=&a=&b=): two sets of texts (one per line),
// and the features of one SAE that best separate them (ContrastFeatures: mean
// difference, AUROC, Cohen's d, exact over all features), each linked to its page.

import { getJson, listModels, postJson } from "../api.js";
import { clearError, featureUrl, fmt, h, initPage, markRendered, modelAndSaeSelects, percent, showError } from "../dom.js";

const TOP_N = 15;
const TEXTS_IN_URL_MAX = 4000;
const UNITS = { CONTRAST_UNIT_TOKEN: "every token", CONTRAST_UNIT_TEXT_MAX: "each text's max" };
const ORDERS = { CONTRAST_ORDER_MEAN_DIFF: "mean difference", CONTRAST_ORDER_AUROC: "AUROC" };

const main = initPage();
const params = new URLSearchParams(location.search);
main.append(
  h("h1", {}, "Contrast"),
  h("p", { class: "lede" }, "Which features fire on one set of texts and not on the other: one text per line in each set."),
);

const form = h("form", { class: "panel card", id: "contrast-form" });
const results = h("div", { id: "results" });
main.append(form, results);

try {
  buildForm(await listModels());
  if (params.get("a") && params.get("b")) await run();
} catch (err) {
  showError(main, err);
}
markRendered();

function choice(id, options, chosen) {
  return h("select", { id, name: id }, Object.entries(options).map(([value, label]) => h("option", { value, selected: value === chosen }, label)));
}

function buildForm(models) {
  const { modelBox, saeBox } = modelAndSaeSelects(models, params);
  form.append(
    h(
      "div",
      { class: "columns" },
      h("label", { for: "set-a" }, "Set A", h("textarea", { id: "set-a", name: "a", rows: 6, required: true, placeholder: "One text per line" }, params.get("a") || "")),
      h("label", { for: "set-b" }, "Set B", h("textarea", { id: "set-b", name: "b", rows: 6, required: true, placeholder: "One text per line" }, params.get("b") || "")),
    ),
    h(
      "div",
      { class: "row" },
      h("label", {}, "Model", modelBox),
      h("label", {}, "SAE", saeBox),
      h("label", {}, "A sample is", choice("unit", UNITS, params.get("unit") || "CONTRAST_UNIT_TOKEN")),
      h("label", {}, "Rank by", choice("order", ORDERS, params.get("order") || "CONTRAST_ORDER_MEAN_DIFF")),
      h("button", { type: "submit", id: "run" }, "Contrast"),
    ),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    run();
  });
}

function lines(text) {
  return String(text || "").split("\n").filter((line) => line.trim());
}

async function run() {
  const data = new FormData(form);
  const state = { model: data.get("model"), sae: data.get("sae"), unit: data.get("unit"), order: data.get("order"), a: lines(data.get("a")), b: lines(data.get("b")) };
  clearError(main);
  if (!state.a.length || !state.b.length) return;
  const url = new URLSearchParams({ model: state.model, sae: state.sae, unit: state.unit, order: state.order });
  const joined = { a: state.a.join("\n"), b: state.b.join("\n") };
  if (joined.a.length + joined.b.length <= TEXTS_IN_URL_MAX) {
    url.set("a", joined.a);
    url.set("b", joined.b);
  }
  history.replaceState(null, "", `?${url}`);
  const button = document.getElementById("run");
  button.disabled = true;
  results.replaceChildren(h("p", { class: "note" }, "Contrasting…"));
  try {
    const response = await postJson("/v1/contrast", {
      model: state.model,
      saes: [state.sae],
      texts_a: state.a,
      texts_b: state.b,
      unit: state.unit,
      order_by: state.order,
      top_n: TOP_N,
    });
    await render(response.saes[0], state);
  } catch (err) {
    results.replaceChildren();
    showError(main, err);
  } finally {
    button.disabled = false;
  }
}

// Resolves once the features' explanations are filled in.
async function render(sae, state) {
  const samples = state.unit === "CONTRAST_UNIT_TEXT_MAX" ? "texts" : "tokens";
  results.replaceChildren(
    h("p", { class: "summary" }, `SAE ${sae.sae} at ${sae.hook_point} · A: ${sae.samples_a} ${samples}, B: ${sae.samples_b} ${samples} · ${sae.active_features} features active · ranked by ${ORDERS[state.order]}`),
    table("more-in-a", "More on A", sae.more_in_a, sae.sae, state.model),
    table("more-in-b", "More on B", sae.more_in_b, sae.sae, state.model),
  );
  await Promise.all(Array.from(results.querySelectorAll(".feature-label"), (cell) => explain(cell, state.model, sae.sae, Number(cell.dataset.feature))));
}

function table(id, title, rows, sae, model) {
  const head = ["mean A", "mean B", "difference", "AUROC", "Cohen's d", "active A", "active B"];
  return h(
    "section",
    { class: "card", "aria-label": title },
    h("h2", {}, title),
    rows.length
      ? h(
          "div",
          { class: "scroll" },
          h(
            "table",
            { id, class: "contrast-table" },
            h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "feature"), head.map((name) => h("th", { scope: "col", class: "num" }, name)))),
            h(
              "tbody",
              {},
              rows.map((r) =>
                h(
                  "tr",
                  {},
                  h("td", { class: "feature-cell" }, h("a", { href: featureUrl(sae, r.feature, model) }, `#${r.feature}`), h("div", { class: "note feature-label", dataset: { feature: r.feature } })),
                  h("td", { class: "num" }, fmt(r.mean_a)),
                  h("td", { class: "num" }, fmt(r.mean_b)),
                  h("td", { class: "num" }, fmt(r.mean_diff)),
                  h("td", { class: "num" }, fmt(r.auroc)),
                  h("td", { class: "num" }, r.cohens_d === undefined || r.cohens_d === null ? "–" : fmt(r.cohens_d)),
                  h("td", { class: "num" }, percent(r.active_fraction_a)),
                  h("td", { class: "num" }, percent(r.active_fraction_b)),
                ),
              ),
            ),
          ),
        )
      : h("p", { class: "note" }, "No feature is higher on this side."),
  );
}

async function explain(cell, model, sae, id) {
  try {
    const info = await getJson(`/v1/saes/${encodeURIComponent(sae)}/features/${id}`, { model });
    cell.textContent = info.explanation ? info.explanation.text : "";
  } catch {
    cell.textContent = ""; // the table still lists the feature without a label
  }
}
