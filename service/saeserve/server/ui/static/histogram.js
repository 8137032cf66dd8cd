// Activation histograms as inline SVG: one bar per bin, a <title> per bar with its range
// and count, and the axis ends labelled. Counts arrive as strings (int64 in proto JSON).

import { fmt } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) el.setAttribute(name, value);
  return el;
}

// `mini` draws a small sparkline-sized chart without axis labels.
export function histogram(edges, countStrings, { mini = false, label = "activation histogram" } = {}) {
  const counts = countStrings.map(Number);
  const width = mini ? 120 : 560;
  const height = mini ? 28 : 160;
  const pad = mini ? { l: 0, r: 0, t: 1, b: 1 } : { l: 44, r: 8, t: 8, b: 24 };
  const root = svg("svg", {
    viewBox: `0 0 ${width} ${height}`,
    class: mini ? "hist mini" : "hist",
    role: "img",
    "aria-label": `${label}: ${counts.length} bins from ${fmt(edges[0] ?? 0)} to ${fmt(edges.at(-1) ?? 0)}`,
  });
  const top = Math.max(1, ...counts);
  const plotW = width - pad.l - pad.r;
  const plotH = height - pad.t - pad.b;
  const barW = plotW / Math.max(1, counts.length);
  counts.forEach((count, i) => {
    const barH = (count / top) * plotH;
    const bar = svg("rect", {
      x: pad.l + i * barW + 0.5,
      y: pad.t + plotH - barH,
      width: Math.max(1, barW - 1),
      height: Math.max(count > 0 ? 1 : 0, barH),
      class: "bar",
    });
    const title = svg("title", {});
    title.textContent = `${fmt(edges[i])} – ${fmt(edges[i + 1])}: ${count.toLocaleString()}`;
    bar.append(title);
    root.append(bar);
  });
  if (!mini) {
    const text = (x, y, s, anchor) => {
      const t = svg("text", { x, y, "text-anchor": anchor, class: "axis" });
      t.textContent = s;
      root.append(t);
    };
    text(pad.l, height - 6, fmt(edges[0] ?? 0), "start");
    text(width - pad.r, height - 6, fmt(edges.at(-1) ?? 0), "end");
    text(pad.l + plotW / 2, height - 6, "activation", "middle");
    text(pad.l - 6, pad.t + 10, top.toLocaleString(), "end");
    text(pad.l - 6, pad.t + plotH, "0", "end");
    root.append(svg("line", { x1: pad.l, y1: pad.t + plotH, x2: width - pad.r, y2: pad.t + plotH, class: "axis-line" }));
  }
  return root;
}
