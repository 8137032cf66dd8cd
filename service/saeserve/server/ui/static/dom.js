// Small DOM helpers shared by the pages: an element builder, error messages on the page,
// number formatting, the API key box, and the model chosen by the page's URL.

import { apiKey, setApiKey } from "./api.js";

// h("a", {href: "/x", class: "y"}, "text", child) -> element. Attributes starting with
// "on" are listeners; null/false attributes and children are skipped.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, value === true ? "" : value);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

// An error box (role=alert) at the top of `where`, replacing an earlier one.
export function showError(where, err) {
  clearError(where);
  const message = err instanceof Error ? err.message : String(err);
  where.prepend(h("div", { class: "error", role: "alert" }, message));
}

export function clearError(where) {
  for (const el of where.querySelectorAll(":scope > .error")) el.remove();
}

// 3 significant digits, no exponent for ordinary activations.
export function fmt(value) {
  const v = Number(value);
  if (!Number.isFinite(v)) return String(value);
  if (v === 0) return "0";
  const abs = Math.abs(v);
  if (abs >= 1000 || abs < 0.001) return v.toExponential(2);
  return v.toPrecision(3).replace(/(\.\d*?)0+$/, "$1").replace(/\.$/, "");
}

export function percent(fraction) {
  return `${fmt(fraction * 100)}%`;
}

// A token string as shown: spaces kept, newlines and tabs made visible.
export function tokenLabel(token) {
  return token.replaceAll("\n", "↵").replaceAll("\t", "⇥");
}

export function featureUrl(sae, feature, model) {
  const base = `/saes/${encodeURIComponent(sae)}/features/${feature}`;
  return model ? `${base}?model=${encodeURIComponent(model)}` : base;
}

// Marks the page fully drawn (performance entry "saeserve:rendered"); tests wait for it
// and read its time as the page's load-and-render time.
export function markRendered() {
  performance.mark("saeserve:rendered");
}

// Page start-up: the key box in the header, the current page marked in the nav.
export function initPage() {
  const box = document.getElementById("api-key");
  box.value = apiKey();
  box.addEventListener("change", () => setApiKey(box.value.trim()));
  document.getElementById("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setApiKey(box.value.trim());
  });
  for (const link of document.querySelectorAll("header.site nav a")) {
    if (link.pathname === location.pathname) link.setAttribute("aria-current", "page");
  }
  return document.getElementById("main");
}

// A <select id="model"> of the server's models with `chosen` selected.
export function modelSelect(models, chosen) {
  return h("select", { id: "model", name: "model" }, models.map((m) => h("option", { value: m.name, selected: m === chosen }, m.name)));
}

// The model and SAE pickers of a page's form (?model= and ?sae= preselect them); the SAE
// list follows the chosen model.
export function modelAndSaeSelects(models, params) {
  const modelBox = modelSelect(models, pickModel(models, params.get("model")));
  const saeBox = h("select", { id: "sae", name: "sae" });
  const fill = () => {
    const { saes } = pickModel(models, modelBox.value);
    saeBox.replaceChildren(...saes.map((s) => h("option", { value: s.id, selected: s.id === params.get("sae") }, `${s.id} (${s.hook_point})`)));
  };
  modelBox.addEventListener("change", fill);
  fill();
  return { modelBox, saeBox };
}

// The model named `name` (from ?model=), or the server's first, its default.
export function pickModel(models, name) {
  return models.find((m) => m.name === name) || models[0];
}
