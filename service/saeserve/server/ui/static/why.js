// "Why this next token?": a card for the inspector that asks POST /v1/attribute which of the
// SAE's features at the text's last token drove the model's most likely next token, and
// lists the strongest by total effect (activation x gradient) up and down, each with its
// direct effect and how the logit splits between features, error and bias.

import { postJson } from "./api.js";
import { featureUrl, fmt, h, percent, showError, tokenLabel } from "./dom.js";

const TOP_N = 8;

export function whyCard(state) {
  const body = h("div", { id: "why-body" }, h("p", { class: "note" }, "Which of this SAE's features at the last token made the model expect its next token?"));
  const button = h("button", { type: "button", id: "why-run" }, "Why this next token?");
  const card = h("section", { class: "card", id: "why", "aria-label": "Why this next token" }, h("h2", {}, "Next token"), button, body);
  button.addEventListener("click", async () => {
    button.disabled = true;
    body.replaceChildren(h("p", { class: "note" }, "Attributing…"));
    try {
      const answer = await postJson("/v1/attribute", { model: state.model, prompt: state.text, saes: [state.sae], top_n: TOP_N });
      body.replaceChildren(...explanation(answer, state));
    } catch (err) {
      body.replaceChildren();
      showError(card, err);
    } finally {
      button.disabled = false;
    }
  });
  return card;
}

function explanation(answer, state) {
  const sae = answer.saes[0];
  const t = answer.target;
  const total = sae.total;
  const rows = [...sae.top_total_positive, ...sae.top_total_negative];
  return [
    h("p", {}, "Most likely next token ", h("code", { id: "why-token" }, JSON.stringify(tokenLabel(t.token))), ` (p ${percent(t.probability)}, logit ${fmt(t.logit)}).`),
    h("p", { class: "note" }, `${sae.active_features} features active · gradient x input ${fmt(total.whole)} = features ${fmt(total.features)} + error ${fmt(total.error)} + bias ${fmt(total.bias)}`),
    h(
      "div",
      { class: "scroll" },
      h(
        "table",
        { id: "why-features" },
        h("thead", {}, h("tr", {}, ...["feature", "activation", "total effect", "direct effect"].map((c, i) => h("th", { scope: "col", class: i ? "num" : null }, c)))),
        h(
          "tbody",
          {},
          rows.map((e) =>
            h(
              "tr",
              { dataset: { feature: e.feature } },
              h("td", {}, h("a", { href: featureUrl(sae.sae, e.feature, state.model) }, `#${e.feature}`)),
              h("td", { class: "num" }, fmt(e.activation)),
              h("td", { class: "num" }, fmt(e.total_effect)),
              h("td", { class: "num" }, sae.has_direct_path ? fmt(e.direct_effect) : "–"),
            ),
          ),
        ),
      ),
    ),
  ];
}
