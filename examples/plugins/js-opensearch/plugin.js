// An OpenSearch consumer for data-exporter, in JavaScript: each report's payload becomes the
// document `{host_port}/{index}/_doc/{report id}` (PUT, so a retried report overwrites its own
// document instead of adding a second one).
//
// It never opens a socket: `send` (narrows:exporter/http@0.1.0) asks the host to make the
// request, with the host's connection pools, CA bundle, client certificate, timeouts and the
// operator's outbound allow-list. Built with componentize-js (see README.md).
//
// Conventions of the generated bindings (componentize-js 0.23): records are objects with
// camelCase fields, variants `{ tag, val }`, options `undefined` or the value, u64 a BigInt,
// list<u8> a Uint8Array. An import returning `result` throws on `err`, with the error value in
// the exception's `payload`; an export returns `err` by throwing an exception whose own
// `payload` property is the error value.

import { send } from 'narrows:exporter/http@0.1.0';
import { log } from 'narrows:exporter/log@0.1.0';

const NAME = 'js-opensearch';
const VERSION = '0.1.0';
const CONFIG_KEY = 'openSearchJs';

// ---- errors across the boundary -----------------------------------------------------------

/** Return `err(payload)` from an export. */
function fail(payload) {
  const e = new Error(typeof payload === 'string' ? payload : payload.reason);
  e.payload = payload;
  throw e;
}

// ---- parameters, as `GET /plugins` shows them -------------------------------------------------

function param(name, type, usage, extra = {}) {
  return { name, type, required: false, default: undefined, usage, secret: false, ...extra };
}

const PARAMETERS = [
  param('host_port', 'string', 'Base URL of the cluster, e.g. https://opensearch:9200', { required: true }),
  param('index', 'string', 'Index the documents are written to, e.g. scans', { required: true }),
  param('username', 'string', 'Basic-auth user name; empty for none', { default: '""' }),
  param('password', 'string', 'Basic-auth password', { default: '""', secret: true }),
  param('checkCert', 'boolean', "Verify the server's TLS certificate", { default: 'true' }),
  param('mutualTLS', 'boolean', 'Present the client certificate configured by the operator', { default: 'false' }),
  param('labels_field', 'string',
    "When set, each document also gets this field: an object of the report's labels (the payload must be a JSON object)",
    { default: '""' }),
];

const SETTINGS = [
  param('request_timeout_ms', 'integer',
    "Deadline of each request to OpenSearch, in ms; the host's http.timeout_ms applies when unset"),
];

// ---- config parsing: the same rules as the Rust opensearch plugin --------------------------

const TYPES = { string: 'string', boolean: 'boolean', integer: 'number' };

/** Parse a JSON object against `params`: unknown fields, missing required ones and wrong types are refused. */
function parseObject(text, params, what) {
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new Error(`${what} is not JSON: ${e.message}`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new Error(`${what} must be a JSON object`);
  }
  const known = new Map(params.map((p) => [p.name, p]));
  const out = {};
  for (const [k, v] of Object.entries(value)) {
    const p = known.get(k);
    if (!p) {
      throw new Error(`unknown field \`${k}\`, expected one of ${params.map((p) => `\`${p.name}\``).join(', ')}`);
    }
    if (typeof v !== TYPES[p.type] || (p.type === 'integer' && !Number.isInteger(v))) {
      throw new Error(`\`${k}\` must be a JSON ${p.type}, got ${JSON.stringify(v)}`);
    }
    out[k] = v;
  }
  for (const p of params) {
    if (!(p.name in out)) {
      if (p.required) throw new Error(`missing field \`${p.name}\``);
      if (p.default !== undefined) out[p.name] = JSON.parse(p.default);
    }
  }
  return out;
}

const INDEX_FORBIDDEN = '\\/*?"<>| ,#:';

function checkDestination(d) {
  const hp = d.host_port.trim();
  if (hp === '') return '`host_port` is empty: set it to the cluster\'s base URL, e.g. https://opensearch:9200';
  if (!hp.startsWith('http://') && !hp.startsWith('https://')) {
    return `\`host_port\` must start with http:// or https://, got ${JSON.stringify(hp)}: e.g. https://opensearch:9200`;
  }
  if (hp.includes('@')) return '`host_port` must not carry credentials: use `username` and `password`';
  const index = d.index;
  if (index === '') return '`index` is empty: set the name of the index to write to, e.g. scans';
  if (index !== index.toLowerCase()) {
    return `\`index\` ${JSON.stringify(index)} has upper-case letters: OpenSearch index names are lower-case`;
  }
  const bad = [...index].find((c) => INDEX_FORBIDDEN.includes(c));
  if (bad !== undefined) {
    return `\`index\` ${JSON.stringify(index)} contains '${bad}', which OpenSearch does not allow in index names`;
  }
  if (/^[_\-+]/.test(index) || index === '.' || index === '..') {
    return `\`index\` ${JSON.stringify(index)} may not start with _, - or + nor be . or ..`;
  }
  if (new TextEncoder().encode(index).length > 255) return '`index` is longer than 255 bytes, the most OpenSearch allows';
  if (d.password !== '' && d.username === '') {
    return '`password` is set but `username` is empty: set both for basic auth, or neither';
  }
  return undefined;
}

function parseDestination(text) {
  const d = parseObject(text, PARAMETERS, 'the destination');
  const problem = checkDestination(d);
  if (problem) throw new Error(problem);
  return d;
}

// ---- outcomes --------------------------------------------------------------------------------

const decoder = new TextDecoder();
const encoder = new TextEncoder();

function header(resp, name) {
  const h = resp.headers.find(([k]) => k === name);
  return h ? h[1] : undefined;
}

/** `Retry-After` in seconds, as milliseconds (a BigInt: u64), when the server said. */
function retryAfterMs(resp) {
  const v = header(resp, 'retry-after');
  return v !== undefined && /^\s*\d+\s*$/.test(v) ? BigInt(v.trim()) * 1000n : undefined;
}

function excerpt(body) {
  const t = decoder.decode(body).trim();
  return t.length > 300 ? `${t.slice(0, 300)}…` : t;
}

/** Why OpenSearch refused a document: `type: reason` from its error answer, else the body. */
function refusal(resp) {
  try {
    const e = JSON.parse(decoder.decode(resp.body)).error;
    if (e && typeof e === 'object') return `${e.type ?? 'error'}: ${e.reason ?? ''}`;
    if (typeof e === 'string') return e;
  } catch {
    // not JSON: show the body
  }
  return excerpt(resp.body);
}

/** One report's outcome from OpenSearch's answer; the same classes as the Rust plugin's. */
function outcomeOf(resp, hostPort) {
  const s = resp.status;
  if (s >= 200 && s < 300) return { tag: 'delivered' };
  if (s === 401) {
    return { tag: 'permanent', val: `OpenSearch at ${hostPort} answered 401: authentication failed; check \`username\` and \`password\`` };
  }
  if (s === 403) {
    return { tag: 'permanent', val: `OpenSearch at ${hostPort} answered 403: the user may not write to this index (${excerpt(resp.body)})` };
  }
  const why = `OpenSearch at ${hostPort} answered ${s}: ${refusal(resp)}`;
  if (s === 408 || s === 429 || s >= 500) return { tag: 'retryable', val: { reason: why, retryAfterMs: retryAfterMs(resp) } };
  return { tag: 'permanent', val: `OpenSearch rejected the document (${s}): ${refusal(resp)}` };
}

/** Transport errors worth retrying: the server may answer later. TLS, policy and bad URLs will not change. */
const RETRYABLE = new Set(['connect', 'timeout', 'protocol', 'response-too-large']);

// ---- the plugin ------------------------------------------------------------------------------

let settings = { request_timeout_ms: undefined };

class Destination {
  /** Open a destination: parse once, keep the base URL, auth and TLS options for every batch. */
  static open(config) {
    let d;
    try {
      d = parseDestination(config);
    } catch (e) {
      fail(e.message);
    }
    return new Destination(d);
  }

  constructor(d) {
    this.hostPort = d.host_port.trim().replace(/\/+$/, '');
    this.base = `${this.hostPort}/${encodeURIComponent(d.index)}/_doc/`;
    this.labelsField = d.labels_field;
    this.template = {
      method: 'put',
      url: '',
      headers: [['content-type', 'application/json']],
      body: undefined,
      basicAuth: d.username !== '' ? [d.username, d.password] : undefined,
      tls: { verifyServer: d.checkCert, clientCertificate: d.mutualTLS },
      timeoutMs: settings.request_timeout_ms,
    };
  }

  /** The document for one report: the payload as sent, or with the labels added under `labels_field`. */
  document(report) {
    if (this.labelsField === '') return encoder.encode(report.payload);
    const doc = JSON.parse(report.payload);
    if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) {
      throw new Error(`\`labels_field\` is set, but the payload is not a JSON object`);
    }
    doc[this.labelsField] = Object.fromEntries(report.metadata.labels);
    return encoder.encode(JSON.stringify(doc));
  }

  deliver(reports) {
    const outcomes = [];
    for (let i = 0; i < reports.length; i++) {
      const report = reports[i];
      let body;
      try {
        body = this.document(report);
      } catch (e) {
        outcomes.push({ tag: 'permanent', val: e.message });
        continue;
      }
      if (report.metadata.attempt > 1) {
        log('debug', `report ${report.id}: attempt ${report.metadata.attempt}`);
      }
      const request = { ...this.template, url: this.base + encodeURIComponent(report.id), body };
      let resp;
      try {
        resp = send(request);
      } catch (e) {
        const err = e.payload;
        if (!err) throw e;
        const why = `OpenSearch at ${this.hostPort}: ${err.tag}: ${err.val}`;
        if (!RETRYABLE.has(err.tag)) {
          outcomes.push({ tag: 'permanent', val: why });
          continue;
        }
        // Unreachable, timed out, cut off: the rest of the batch would fare no better. At the
        // first report the whole batch failed (as the Rust plugin's one _bulk request would);
        // later, the reports not sent yet are retried.
        if (outcomes.length === 0) fail({ reason: why, retryAfterMs: undefined });
        while (outcomes.length < reports.length) outcomes.push({ tag: 'retryable', val: { reason: why, retryAfterMs: undefined } });
        return outcomes;
      }
      outcomes.push(outcomeOf(resp, this.hostPort));
    }
    return outcomes;
  }

  /** Every document was acknowledged by OpenSearch as it was sent: nothing is held here. */
  flush() {}
}

export const consumer = {
  info() {
    return {
      name: NAME,
      version: VERSION,
      configKey: CONFIG_KEY,
      description: "Indexes each report's payload as an OpenSearch document, one PUT per report (JavaScript example).",
      parameters: PARAMETERS,
      settings: SETTINGS,
    };
  },

  init(text) {
    try {
      settings = parseObject(text, SETTINGS, 'the settings');
    } catch (e) {
      fail(e.message);
    }
    if (settings.request_timeout_ms !== undefined && !(settings.request_timeout_ms > 0 && settings.request_timeout_ms < 2 ** 32)) {
      fail('`request_timeout_ms` must be between 1 and 4294967295');
    }
  },

  validate(text) {
    try {
      parseDestination(text);
    } catch (e) {
      fail(e.message);
    }
  },

  Destination,
};
