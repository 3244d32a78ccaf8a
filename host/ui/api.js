// The admin API as the console calls it: the token from sessionStorage as a bearer token on
// every call (no cookies), errors as readable text, a 401 back to the login form.

const KEY = "data-exporter-admin-token";

export const token = {
  get: () => sessionStorage.getItem(KEY),
  set: (t) => sessionStorage.setItem(KEY, t),
  clear: () => sessionStorage.removeItem(KEY),
};

/** Thrown for an answer that is not 2xx: `message` is the server's own explanation. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let onUnauthorized = () => {};
/** Called with the server's message when a call is refused for its token. */
export function whenUnauthorized(f) {
  onUnauthorized = f;
}

async function failure(resp) {
  let code = "http_" + resp.status;
  let message = `${resp.status} ${resp.statusText}`;
  try {
    const body = await resp.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch {
    // not JSON: keep the status line
  }
  const err = new ApiError(resp.status, code, message);
  if (resp.status === 401) onUnauthorized(message);
  return err;
}

/** A call to the admin API; the parsed JSON answer, or an ApiError. */
export async function call(method, path, body, signal) {
  // A view left (or logged out of) makes no more calls.
  if (signal && signal.aborted) throw new DOMException("the view was left", "AbortError");
  const t = token.get();
  if (!t) throw new ApiError(401, "unauthorized", "no admin token: log in first");
  const headers = { Authorization: `Bearer ${t}`, Accept: "application/json" };
  const init = { method, headers, credentials: "omit", cache: "no-store", signal };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, "unreachable", `the host did not answer (${e.message}): is it running?`);
  }
  if (!resp.ok) throw await failure(resp);
  return resp.json();
}

export const get = (path, signal) => call("GET", path, undefined, signal);
export const post = (path, body) => call("POST", path, body);

/**
 * Stream JSON lines from `path` (GET, bearer token): `onLine(object)` for each line, until the
 * server ends the stream or `signal` aborts; `onOpen()` once the server answered (it is watching
 * from then on). Resolves when the stream ends.
 */
export async function streamLines(path, signal, onLine, onOpen) {
  const t = token.get();
  if (!t) throw new ApiError(401, "unauthorized", "no admin token: log in first");
  const resp = await fetch(path, {
    headers: { Authorization: `Bearer ${t}`, Accept: "application/x-ndjson" },
    credentials: "omit",
    cache: "no-store",
    signal,
  });
  if (!resp.ok) throw await failure(resp);
  if (onOpen) onOpen();
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += value;
    let nl;
    while ((nl = buffered.indexOf("\n")) >= 0) {
      const line = buffered.slice(0, nl).trim();
      buffered = buffered.slice(nl + 1);
      if (line) onLine(JSON.parse(line));
    }
  }
}

/** `?a=1&b=2` of the non-empty entries of `params`. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}
