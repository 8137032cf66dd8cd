// Token heat maps: a colour-blind-safe sequential scale (ColorBrewer "Blues", which varies
// in lightness only), token rows built as one HTML string, and event delegation for hover,
// focus and arrow-key movement, so a 2,000-token text has no per-token listeners.

import { fmt, h, tokenLabel } from "./dom.js";

// ColorBrewer Blues, 9 classes, light to dark.
const BLUES = [
  [247, 251, 255], [222, 235, 247], [198, 219, 239], [158, 202, 225], [107, 174, 214],
  [66, 146, 198], [33, 113, 181], [8, 81, 156], [8, 48, 107],
];

// Colour for a fraction t in [0, 1] of the scale, interpolated between the classes.
function scaleColour(t) {
  const x = Math.min(1, Math.max(0, t)) * (BLUES.length - 1);
  const i = Math.min(BLUES.length - 2, Math.floor(x));
  const f = x - i;
  const [a, b] = [BLUES[i], BLUES[i + 1]];
  const c = a.map((v, j) => Math.round(v + (b[j] - v) * f));
  return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
}

// Inline style for a token with `value` on a scale up to `max`: no background at 0
// (or below), white text on the dark half.
export function heatStyle(value, max) {
  if (!(value > 0) || !(max > 0)) return "";
  const t = 0.08 + 0.92 * Math.min(1, value / max);
  return `background:${scaleColour(t)};${t > 0.55 ? "color:#fff;" : ""}`;
}

// A legend: the gradient from 0 to `max`, with the label of what is coloured.
export function legend(max, label) {
  const stops = [0, 0.25, 0.5, 0.75, 1].map((t) => `${scaleColour(0.08 + 0.92 * t)} ${t * 100}%`);
  return h(
    "div",
    { class: "legend" },
    h("span", {}, label),
    h("span", { class: "legend-low" }, "0"),
    h("span", { class: "legend-bar", style: `background:linear-gradient(to right, ${stops})` }),
    h("span", { class: "legend-high" }, fmt(max)),
  );
}

// One row of tokens coloured by `values` (same length) on a scale up to `max`. Each token
// is a span.tok with data-i, data-value and a title naming the value; `mark` (an index or
// -1) gets the .max class; `lineBreaks` breaks the line after a newline's ↵ mark.
// Returns the container element.
export function tokenRow(tokens, values, max, { mark = -1, label = "activation", lineBreaks = false } = {}) {
  const row = document.createElement("div");
  row.className = "tokens";
  const html = [];
  for (let i = 0; i < tokens.length; i++) {
    const v = values[i];
    const shown = tokenLabel(tokens[i]);
    const text = escapeHtml(lineBreaks ? shown.replaceAll("↵", "↵\n") : shown);
    const cls = i === mark ? "tok max" : "tok";
    const title = escapeHtml(`${JSON.stringify(tokens[i])}  ${label} ${fmt(v)}`);
    html.push(
      `<span class="${cls}" data-i="${i}" data-value="${v}" tabindex="-1" title="${title}" style="${heatStyle(v, max)}">${text}</span>`,
    );
  }
  row.innerHTML = html.join("");
  const first = row.querySelector(".tok.max") || row.firstElementChild;
  if (first) first.tabIndex = 0;
  return row;
}

function escapeHtml(s) {
  return s.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;").replaceAll('"', "&quot;");
}

// Arrow keys (and Home/End) move focus between the .tok spans inside `container` with a
// roving tabindex; `onToken(span)` runs when a token is hovered or focused, and
// `onPick(span)` (optional) on click or Enter.
export function tokenNavigation(container, onToken, onPick) {
  const tokens = () => container.querySelectorAll(".tok");
  container.addEventListener("keydown", (event) => {
    const current = event.target.closest(".tok");
    if (!current) return;
    if (event.key === "Enter" && onPick) {
      onPick(current);
      event.preventDefault();
      return;
    }
    const next = neighbour(current, event.key);
    if (!next) return;
    event.preventDefault();
    current.tabIndex = -1;
    next.tabIndex = 0;
    next.focus();
  });
  // The adjacent token is usually the adjacent element; across rows, search the list.
  const neighbour = (current, key) => {
    const sibling = { ArrowRight: current.nextElementSibling, ArrowLeft: current.previousElementSibling }[key];
    if (sibling && sibling.classList.contains("tok")) return sibling;
    if (!["ArrowRight", "ArrowLeft", "Home", "End"].includes(key)) return null;
    const all = Array.from(tokens());
    const at = all.indexOf(current);
    return all[{ ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: all.length - 1 }[key]] || null;
  };
  const show = (event) => {
    const tok = event.target.closest(".tok");
    if (tok && container.contains(tok)) onToken(tok);
  };
  container.addEventListener("mouseover", show);
  container.addEventListener("focusin", show);
  if (onPick) {
    container.addEventListener("click", (event) => {
      const tok = event.target.closest(".tok");
      if (tok) onPick(tok);
    });
  }
}
