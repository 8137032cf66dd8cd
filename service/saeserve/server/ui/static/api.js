// The JSON API under /v1, called from the browser: fetch with the user's API key, errors
// as ApiError carrying the server's message, and the Generate event stream as an async
// iterator of chunks. Responses are protobuf JSON with the proto's snake_case names.

const KEY_STORAGE = "saeserve.apiKey";

class ApiError extends Error {
  constructor(status, error) {
    let message = error.message || `HTTP ${status}`;
    if (status === 401) message += " (type an API key into the box at the top right)";
    super(message);
    this.status = status;
  }
}

export function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
}

function headers(withBody) {
  const out = {};
  if (withBody) out["content-type"] = "application/json";
  const key = apiKey();
  if (key) out.authorization = `Bearer ${key}`;
  return out;
}

async function send(path, init) {
  try {
    return await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, { message: `Could not reach the server (${err.message})` });
  }
}

async function failure(response) {
  let error = { message: `HTTP ${response.status} ${response.statusText}` };
  try {
    const body = await response.json();
    if (body && body.error) error = body.error;
  } catch {
    // not JSON (a proxy's page): keep the status line
  }
  return new ApiError(response.status, error);
}

export async function getJson(path, params = {}) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") query.set(name, value);
  }
  const url = query.toString() ? `${path}?${query}` : path;
  const response = await send(url, { headers: headers(false) });
  if (!response.ok) throw await failure(response);
  return response.json();
}

export async function postJson(path, body) {
  const response = await send(path, {
    method: "POST",
    headers: headers(true),
    body: JSON.stringify(body),
  });
  if (!response.ok) throw await failure(response);
  return response.json();
}

// POST /v1/generate: yields each GenerateChunk; an error event raises ApiError.
export async function* generateStream(body, signal) {
  const response = await send("/v1/generate", {
    method: "POST",
    headers: headers(true),
    body: JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replaceAll("\r\n", "\n"); // SSE allows CRLF line ends
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(500, chunk.error);
      yield chunk;
    }
  }
}

// The server's models as ModelInfo objects (the `saeserve` field of /v1/models).
export async function listModels() {
  const body = await getJson("/v1/models");
  return body.data.map((entry) => entry.saeserve);
}
