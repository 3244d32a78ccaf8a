// {{name}}: a data-exporter consumer plugin in JavaScript. Each report's payload is POSTed to
// the destination's `url`, with the report id in `x-report-id` (so the receiver can drop
// repeats). The plugin never opens a socket: `send` (narrows:exporter/http@0.1.0) asks the host
// to make the request, under the operator's outbound allow-list, TLS settings and timeouts.
//
// Bindings (componentize-js): records are objects with camelCase fields, variants
// `{ tag, val }`, options `undefined` or the value. An import returning `result` throws on
// `err` (the error value in the exception's `payload`); an export returns `err` by throwing an
// exception whose `payload` is the error value.

import { send } from 'narrows:exporter/http@0.1.0';

const NAME = '{{name}}';
const VERSION = '0.1.0';
const CONFIG_KEY = '{{config_key}}';

const PARAMETERS = [
  { name: 'url', type: 'string', required: true, default: undefined, secret: false,
    usage: "Where each report's payload is POSTed, e.g. https://receiver.example/hook" },
  { name: 'token', type: 'string', required: false, default: '""', secret: true,
    usage: 'Sent as `Authorization: Bearer <token>`; empty for none' },
];

/** Return `err(payload)` from an export. */
function fail(payload) {
  const e = new Error(typeof payload === 'string' ? payload : payload.reason);
  e.payload = payload;
  throw e;
}

/** The destination's fields; fails with what to change. */
function parseDestination(text) {
  let d;
  try {
    d = JSON.parse(text);
  } catch (e) {
    fail(`the destination is not JSON: ${e.message}`);
  }
  if (d === null || typeof d !== 'object' || Array.isArray(d)) fail('the destination must be a JSON object');
  const unknown = Object.keys(d).find((k) => k !== 'url' && k !== 'token');
  if (unknown !== undefined) fail(`unknown field \`${unknown}\`, expected \`url\` or \`token\``);
  if (typeof d.url !== 'string' || !/^https?:\/\//.test(d.url)) {
    fail(`\`url\` must be a string starting with http:// or https://, got ${JSON.stringify(d.url)}`);
  }
  const token = d.token ?? '';
  if (typeof token !== 'string') fail('`token` must be a string');
  return { url: d.url, token };
}

/** Transport errors worth retrying: the receiver may answer later. */
const RETRYABLE = new Set(['connect', 'timeout', 'protocol']);
const encoder = new TextEncoder();
const decoder = new TextDecoder();

class Destination {
  static open(config) {
    return new Destination(parseDestination(config));
  }

  constructor({ url, token }) {
    this.url = url;
    this.headers = [['content-type', 'application/json']];
    if (token !== '') this.headers.push(['authorization', `Bearer ${token}`]);
  }

  deliver(reports) {
    return reports.map((report) => {
      const request = {
        method: 'post',
        url: this.url,
        headers: [...this.headers, ['x-report-id', report.id]],
        body: encoder.encode(report.payload),
        basicAuth: undefined,
        tls: { verifyServer: true, clientCertificate: false },
        timeoutMs: undefined,
      };
      let resp;
      try {
        resp = send(request);
      } catch (e) {
        const err = e.payload;
        if (!err) throw e;
        const why = `${err.tag}: ${err.val}`;
        return RETRYABLE.has(err.tag)
          ? { tag: 'retryable', val: { reason: why, retryAfterMs: undefined } }
          : { tag: 'permanent', val: why };
      }
      const s = resp.status;
      if (s >= 200 && s < 300) return { tag: 'delivered' };
      if (s === 408 || s === 429 || s >= 500) return { tag: 'retryable', val: { reason: `answered ${s}`, retryAfterMs: undefined } };
      return { tag: 'permanent', val: `answered ${s}: ${decoder.decode(resp.body).slice(0, 200)}` };
    });
  }

  /** Every report was answered as it was sent: nothing is held here. */
  flush() {}
}

export const consumer = {
  info() {
    return {
      name: NAME,
      version: VERSION,
      configKey: CONFIG_KEY,
      description: "POSTs each report's payload to a URL",
      parameters: PARAMETERS,
      settings: [],
    };
  },

  init(_settings) {},

  validate(text) {
    parseDestination(text);
  },

  Destination,
};
