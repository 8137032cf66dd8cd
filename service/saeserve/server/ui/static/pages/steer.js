// Steering playground (/steer): a prompt or chat messages, any number of interventions
// (feature by id or by search, mode, strength, positions, an "only when" condition),
// sampling settings, seed and "stop when" conditions.
// One /v1/generate call streams the steered and baseline continuations side by side;
// each token shows its logprob, the likeliest alternatives and the steered features'
// activations (tracked) on hover or focus, and the columns can be coloured by one of those
// features. The whole form lives in the URL (see stateToUrl), so a link reproduces a result.

import { generateStream, getJson, listModels } from "../api.js";
import { clearError, featureUrl, fmt, h, initPage, markRendered, modelSelect, pickModel, showError } from "../dom.js";
import { heatStyle, legend, tokenNavigation } from "../heat.js";

const MODES = ["add", "clamp", "scale", "ablate"];
const POSITIONS = ["all", "prompt", "generated", "indices"];
// Slider range per mode; the number box beside it takes any value.
const RANGES = { add: [-50, 50, 0.5], clamp: [-20, 50, 0.5], scale: [-5, 10, 0.1], ablate: [0, 1, 1] };
const DEFAULTS = { n: 40, temp: 0.8, top_p: 1, top_k: 0, seed: 1 };
const TOP_LOGPROBS = 5;

const main = initPage();
const params = new URLSearchParams(location.search);
main.append(h("h1", {}, "Steering playground"));
const form = h("form", { class: "panel card", id: "steer-form" });
const output = h("section", { id: "output", "aria-label": "Generated text" });
main.append(form, output);

let models = [];
let running = null; // AbortController of the stream in flight
let rowCount = 0; // intervention rows made, for unique datalist ids
try {
  models = await listModels();
  buildForm();
} catch (err) {
  showError(main, err);
}
markRendered();

function currentModel() {
  return pickModel(models, form.elements.model.value);
}

function buildForm() {
  const model = pickModel(models, params.get("model"));
  const messages = params.getAll("msg").map(parseMessage);
  const useChat = messages.length > 0;
  const modelBox = modelSelect(models, model);
  const promptBox = h("textarea", { id: "prompt", name: "prompt", rows: 3, placeholder: "Once upon a time" }, params.get("prompt") || "");
  const chatBox = h("div", { id: "messages", class: "interventions" });
  const kind = (value, label) => h("label", { class: "check" }, h("input", { type: "radio", name: "kind", value, checked: (value === "chat") === useChat }), label);
  const showKind = () => {
    const chat = form.elements.kind.value === "chat";
    promptBox.hidden = chat;
    chatArea.hidden = !chat;
  };
  const chatArea = h(
    "div",
    {},
    chatBox,
    h("p", { class: "note", id: "chat-note" }),
    h("button", { type: "button", class: "secondary", onclick: () => chatBox.append(messageRow({ role: "user", content: "" })) }, "Add message"),
  );
  for (const m of messages.length ? messages : [{ role: "user", content: "" }]) chatBox.append(messageRow(m));

  const ivBox = h("div", { id: "interventions", class: "interventions" });

  const number = (name, label, value, attrs = {}) => h("label", {}, label, h("input", { id: name, name, type: "number", value, ...attrs }));
  form.append(
    h("div", { class: "row" }, h("label", {}, "Model", modelBox), kind("prompt", "Prompt"), kind("chat", "Chat messages")),
    promptBox,
    chatArea,
    h("h2", {}, "Interventions"),
    ivBox,
    h("div", { class: "row" }, h("button", { type: "button", class: "secondary", id: "add-iv", onclick: () => ivBox.append(interventionRow(currentModel(), null)) }, "Add intervention")),
    h("h2", {}, "Sampling"),
    h(
      "div",
      { class: "row" },
      number("n", "Max new tokens", params.get("n") || DEFAULTS.n, { min: 1 }),
      number("temp", "Temperature", params.get("temp") || DEFAULTS.temp, { min: 0, step: "any" }),
      number("top_p", "Top p", params.get("top_p") || DEFAULTS.top_p, { min: 0, max: 1, step: "any" }),
      number("top_k", "Top k", params.get("top_k") || DEFAULTS.top_k, { min: 0 }),
      number("seed", "Seed (empty: random)", params.has("seed") ? params.get("seed") : DEFAULTS.seed, { min: 0 }),
      h("label", {}, "Stop strings (separate with |)", h("input", { id: "stop", name: "stop", value: params.getAll("stop").join("|") })),
      h("label", {}, "Stop when (SAE:FEATURE>T or <T, separate with |)", h("input", { id: "stop-when", name: "stop_when", value: params.getAll("stop_when").join("|"), placeholder: "resid_post.1:2485>1" })),
      h("label", { class: "check" }, h("input", { type: "checkbox", id: "include-baseline", name: "include_baseline", checked: params.get("baseline") !== "0" }), "Baseline beside it"),
    ),
    h(
      "div",
      { class: "row" },
      h("button", { type: "submit", id: "generate" }, "Generate"),
      h("button", { type: "button", class: "secondary", id: "stop-button", disabled: true, onclick: () => running && running.abort() }, "Stop"),
      h("button", { type: "button", class: "secondary", id: "copy-link", onclick: copyLink }, "Copy link"),
    ),
  );
  // rows read the form's model, so they are made once the form is built
  for (const iv of params.getAll("iv").map(parseIntervention).filter(Boolean)) ivBox.append(interventionRow(model, iv));
  const noteChat = () => {
    document.getElementById("chat-note").textContent = currentModel().has_chat_template ? "" : `Model ${currentModel().name} has no chat template: use a prompt.`;
  };
  modelBox.addEventListener("change", () => {
    noteChat();
    for (const row of ivBox.children) fillSaes(row.querySelector("select.sae"), currentModel(), row.querySelector("select.sae").value);
  });
  for (const radio of form.elements.kind) radio.addEventListener("change", showKind);
  showKind();
  noteChat();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    generate();
  });
}

function messageRow(message) {
  const roles = ["system", "user", "assistant"];
  const row = h(
    "div",
    { class: "message" },
    h("select", { class: "role", "aria-label": "role" }, roles.map((r) => h("option", { value: r, selected: r === message.role }, r))),
    h("textarea", { class: "content", rows: 2, "aria-label": "message" }, message.content),
    h("button", { type: "button", class: "secondary", onclick: () => row.remove(), "aria-label": "remove message" }, "✕"),
  );
  return row;
}

function fillSaes(select, model, chosen) {
  select.replaceChildren(...model.saes.map((s) => h("option", { value: s.id, selected: s.id === chosen }, s.id)));
}

function interventionRow(model, iv) {
  const n = rowCount++;
  iv = iv || { sae: model.saes[0]?.id || "", feature: "", mode: "add", value: 8, positions: "all", indices: "", when: "" };
  const sae = h("select", { class: "sae", "aria-label": "SAE" });
  fillSaes(sae, model, iv.sae);
  const list = h("datalist", { id: `feature-options-${n}` });
  const feature = h("input", { class: "feature", type: "text", list: list.id, value: iv.feature, placeholder: "id or search words", autocomplete: "off", "aria-label": "feature id, or words to search" });
  const link = h("a", { class: "feature-link", href: "#", hidden: true }, "page");
  const mode = h("select", { class: "mode", "aria-label": "mode" }, MODES.map((m) => h("option", { value: m, selected: m === iv.mode }, m)));
  const slider = h("input", { type: "range", class: "strength-slider", "aria-label": "strength" });
  const value = h("input", { type: "number", class: "strength", step: "any", value: iv.value, "aria-label": "strength value" });
  const positions = h("select", { class: "positions", "aria-label": "positions" }, POSITIONS.map((p) => h("option", { value: p, selected: p === iv.positions }, p)));
  const indices = h("input", { class: "indices", type: "text", value: iv.indices, placeholder: "0,1,2", "aria-label": "prompt token indices" });
  const when = h("input", { class: "when", type: "text", value: iv.when, placeholder: "SAE:FEATURE>T", "aria-label": "only where this condition holds" });
  const row = h(
    "div",
    { class: "intervention" },
    h("label", {}, "SAE", sae),
    h("label", {}, "Feature", feature),
    list,
    link,
    h("label", {}, "Mode", mode),
    h("label", {}, "Strength", h("span", { class: "strength-pair" }, slider, value)),
    h("label", {}, "Positions", positions),
    indices,
    h("label", {}, "Only when", when),
    h("button", { type: "button", class: "secondary", onclick: () => row.remove(), "aria-label": "remove intervention" }, "✕"),
  );
  const sync = () => {
    const [lo, hi, step] = RANGES[mode.value];
    Object.assign(slider, { min: lo, max: hi, step });
    slider.value = value.value;
    slider.disabled = value.disabled = mode.value === "ablate";
    indices.hidden = positions.value !== "indices";
    const id = feature.value.trim();
    link.hidden = !/^\d+$/.test(id);
    if (!link.hidden) link.href = featureUrl(sae.value, Number(id), currentModel().name);
  };
  let searchTimer = null;
  feature.addEventListener("input", () => {
    sync();
    clearTimeout(searchTimer);
    const query = feature.value.trim();
    if (!query || /^\d+$/.test(query)) return;
    searchTimer = setTimeout(() => suggest(list, query, sae.value), 250);
  });
  slider.addEventListener("input", () => (value.value = slider.value));
  value.addEventListener("input", () => (slider.value = value.value));
  for (const el of [mode, positions, sae]) el.addEventListener("change", sync);
  sync();
  return row;
}

async function suggest(list, query, sae) {
  try {
    const { matches } = await getJson("/v1/features/search", { q: query, sae, model: currentModel().name, limit: 10 });
    list.replaceChildren(...matches.map((m) => h("option", { value: String(m.feature.feature) }, m.explanation ? m.explanation.text : `feature ${m.feature.feature}`)));
  } catch {
    list.replaceChildren(); // a failed suggestion leaves the box as typed
  }
}

// URL encoding of an intervention: sae:feature:mode:value:positions[:i,j,...][@condition]
function parseIntervention(text) {
  const at = text.indexOf("@");
  const when = at < 0 ? "" : text.slice(at + 1);
  const parts = (at < 0 ? text : text.slice(0, at)).split(":");
  const n = parts.at(-2) === "indices" ? 5 : 4;
  if (parts.length < n + 1) return null;
  const [feature, mode, value, positions, indices = ""] = parts.splice(-n);
  return { sae: parts.join(":"), feature, mode: MODES.includes(mode) ? mode : "add", value, positions: POSITIONS.includes(positions) ? positions : "all", indices, when };
}

// A FeatureCondition written as the CLI writes it, SAE:FEATURE>T or SAE:FEATURE<T; null if not.
function parseCondition(text) {
  const match = /^(.+):(\d+)([<>])(-?[\d.]+(?:e-?\d+)?)$/.exec(text.trim());
  if (!match) return null;
  return { sae: match[1], feature: Number(match[2]), threshold: Number(match[4]), below: match[3] === "<" };
}

function parseMessage(text) {
  const at = text.indexOf(":");
  return at < 0 ? { role: "user", content: text } : { role: text.slice(0, at), content: text.slice(at + 1) };
}

function readInterventions() {
  return Array.from(document.querySelectorAll(".intervention"), (row) => ({
    sae: row.querySelector(".sae").value,
    feature: row.querySelector(".feature").value.trim(),
    mode: row.querySelector(".mode").value,
    value: row.querySelector(".strength").value,
    positions: row.querySelector(".positions").value,
    indices: row.querySelector(".indices").value.trim(),
    when: row.querySelector(".when").value.trim(),
  }));
}

function readState() {
  const el = form.elements;
  return {
    model: el.model.value,
    chat: el.kind.value === "chat",
    prompt: el.prompt.value,
    messages: Array.from(document.querySelectorAll("#messages .message"), (row) => ({ role: row.querySelector(".role").value, content: row.querySelector(".content").value })),
    interventions: readInterventions(),
    n: el.n.value,
    temp: el.temp.value.trim(),
    top_p: el.top_p.value.trim(),
    top_k: el.top_k.value,
    seed: el.seed.value.trim(),
    stop: el.stop.value.split("|").filter((s) => s !== ""),
    stopWhen: el.stop_when.value.split("|").map((s) => s.trim()).filter((s) => s !== ""),
    baseline: el.include_baseline.checked,
  };
}

function stateToUrl(state) {
  const url = new URLSearchParams({ model: state.model });
  if (state.chat) for (const m of state.messages) url.append("msg", `${m.role}:${m.content}`);
  else url.set("prompt", state.prompt);
  for (const iv of state.interventions) {
    const fields = [iv.sae, iv.feature, iv.mode, iv.value, iv.positions];
    if (iv.positions === "indices") fields.push(iv.indices);
    url.append("iv", fields.join(":") + (iv.when ? `@${iv.when}` : ""));
  }
  for (const name of ["n", "temp", "top_p", "top_k", "seed"]) url.set(name, state[name]);
  for (const s of state.stop) url.append("stop", s);
  for (const s of state.stopWhen) url.append("stop_when", s);
  url.set("baseline", state.baseline ? "1" : "0");
  return `${location.pathname}?${url}`;
}

// The steered features, each once: tracked, so every token reports their activations.
function trackedFeatures(interventions) {
  const unique = new Map();
  for (const iv of interventions) {
    if (/^\d+$/.test(iv.feature)) unique.set(`${iv.sae}/${iv.feature}`, { sae: iv.sae, feature: Number(iv.feature) });
  }
  return [...unique.values()];
}

// The GenerateRequest JSON; the server validates every field and names any it rejects.
function requestBody(state) {
  const sampling = { max_new_tokens: Number(state.n), top_k: Number(state.top_k), stop: state.stop };
  // empty optional fields stay unset: the server's defaults (temperature 1, top_p 1, a random seed)
  if (state.temp !== "") sampling.temperature = Number(state.temp);
  if (state.top_p !== "") sampling.top_p = Number(state.top_p);
  if (state.seed !== "") sampling.seed = state.seed; // uint64: a string in proto JSON
  const body = {
    model: state.model,
    sampling,
    interventions: state.interventions.map((iv) => ({
      mode: `INTERVENTION_MODE_${iv.mode.toUpperCase()}`,
      sae: iv.sae,
      feature: Number(iv.feature),
      value: iv.mode === "ablate" ? 0 : Number(iv.value),
      positions: `POSITIONS_${iv.positions.toUpperCase()}`,
      indices: iv.positions === "indices" ? iv.indices.split(",").filter((s) => s.trim()).map(Number) : [],
      ...(iv.when ? { condition: parseCondition(iv.when) } : {}),
    })),
    stop_conditions: state.stopWhen.map(parseCondition),
    include_baseline: state.baseline,
    track: trackedFeatures(state.interventions),
    logprobs: true,
    top_logprobs: TOP_LOGPROBS,
  };
  if (state.chat) body.messages = state.messages;
  else body.prompt = state.prompt;
  return body;
}

async function copyLink() {
  const url = new URL(stateToUrl(readState()), location.href).href;
  history.replaceState(null, "", url);
  try {
    await navigator.clipboard.writeText(url);
  } catch {
    // clipboard needs a secure context; the address bar has the link too
  }
}

function column(id, title, prompt) {
  const stream = h("div", { class: "stream", id: `${id}-text` });
  if (prompt) stream.append(h("span", { class: "prompt" }, prompt));
  const readout = h("p", { class: "readout", "aria-live": "polite" });
  const finish = h("p", { class: "finish", id: `${id}-finish` });
  tokenNavigation(stream, (tok) => (readout.textContent = tok.title.replaceAll("\n", " · ")));
  return { el: h("section", { class: "card", id, "aria-label": title }, h("h2", {}, title), stream, finish, readout), stream, finish };
}

function tokenSpan(chunk, track) {
  const p = chunk.logprob;
  const lines = [`${JSON.stringify(chunk.text)} (token ${chunk.token_id})`];
  if (p !== undefined && p !== null) lines.push(`logprob ${fmt(p)} (p ${fmt(Math.exp(p))})`);
  if (chunk.top_logprobs && chunk.top_logprobs.length) {
    lines.push(`alternatives: ${chunk.top_logprobs.map((t) => `${JSON.stringify(t.token)} ${fmt(t.logprob)}`).join(", ")}`);
  }
  track.forEach((t, j) => lines.push(`${t.sae}/${t.feature} ${fmt(chunk.tracked[j] ?? 0)}`));
  return h("span", { class: "tok", tabindex: -1, title: lines.join("\n"), dataset: { tracked: chunk.tracked.join(",") } }, chunk.text);
}

// "Colour by": none, or one tracked feature (its index in chunk.tracked).
function colourControl(track) {
  if (!track.length) return null;
  const select = h(
    "select",
    { id: "colour-by", onchange: colourTokens },
    h("option", { value: "-1" }, "nothing"),
    track.map((t, j) => h("option", { value: j, selected: j === 0 }, `${t.sae}/${t.feature}`)),
  );
  return h("div", { class: "row colour-by" }, h("label", {}, "Colour tokens by feature", select), h("div", { id: "colour-legend" }));
}

function colourTokens() {
  const select = document.getElementById("colour-by");
  if (!select) return;
  const j = Number(select.value);
  const tokens = output.querySelectorAll(".stream .tok");
  const values = Array.from(tokens, (t) => (j < 0 ? 0 : Number(t.dataset.tracked.split(",")[j]) || 0));
  const max = Math.max(0, ...values);
  tokens.forEach((t, i) => t.setAttribute("style", heatStyle(values[i], max)));
  document.getElementById("colour-legend").replaceChildren(j < 0 ? "" : legend(max, select.selectedOptions[0].textContent));
}

async function generate() {
  clearError(main);
  const state = readState();
  // an empty or searched-for feature box would otherwise be sent as feature 0
  const unresolved = state.interventions.findIndex((iv) => !/^\d+$/.test(iv.feature));
  if (unresolved >= 0) {
    showError(main, `Intervention ${unresolved + 1}: the feature must be an id (type words to search, then pick a match).`);
    return;
  }
  const badWhen = state.interventions.findIndex((iv) => iv.when && !parseCondition(iv.when));
  const badStop = state.stopWhen.find((s) => !parseCondition(s));
  if (badWhen >= 0 || badStop !== undefined) {
    const where = badWhen >= 0 ? `Intervention ${badWhen + 1}: "only when"` : `"Stop when" ${JSON.stringify(badStop)}`;
    showError(main, `${where} must read SAE:FEATURE>T or SAE:FEATURE<T.`);
    return;
  }
  history.replaceState(null, "", stateToUrl(state));
  const shownPrompt = state.chat ? "" : state.prompt;
  const steered = column("steered", state.interventions.length ? "Steered" : "No interventions", shownPrompt);
  const baseline = column("baseline", "Baseline", shownPrompt);
  const columns = { VARIANT_STEERED: steered, VARIANT_BASELINE: baseline };
  const track = trackedFeatures(state.interventions);
  output.replaceChildren(colourControl(track), h("div", { class: state.baseline ? "columns" : "" }, steered.el, state.baseline ? baseline.el : null));
  output.dataset.state = "streaming";
  const button = document.getElementById("generate");
  const stopButton = document.getElementById("stop-button");
  button.disabled = true;
  stopButton.disabled = false;
  running = new AbortController();
  try {
    for await (const chunk of generateStream(requestBody(state), running.signal)) {
      const col = columns[chunk.variant];
      if (!col) continue;
      if (chunk.token_id >= 0) {
        const span = tokenSpan(chunk, track);
        if (!col.stream.querySelector(".tok")) span.tabIndex = 0;
        col.stream.append(span);
      }
      if (chunk.finish_reason && chunk.finish_reason !== "FINISH_REASON_UNSPECIFIED") {
        let reason = chunk.finish_reason.replace("FINISH_REASON_", "").toLowerCase();
        if (chunk.stop_condition !== undefined) reason += ` (stop when #${chunk.stop_condition + 1}: ${Number(chunk.stop_activation).toFixed(3)})`;
        const usage = chunk.usage || {};
        col.finish.textContent = `finished: ${reason} · ${usage.generated_tokens ?? "?"} tokens · prompt ${usage.prompt_tokens ?? "?"} tokens`;
      }
    }
    output.dataset.state = "done";
  } catch (err) {
    output.dataset.state = err.name === "AbortError" ? "stopped" : "error";
    if (err.name !== "AbortError") showError(main, err);
  } finally {
    colourTokens();
    running = null;
    button.disabled = false;
    stopButton.disabled = true;
  }
}
