// Tenants: access keys, revoked or not, credentials (kinds and counts, never a token), limits,
// labels, routes (destinations with secrets hidden), per-key counters (GET /tenants).

import { h, replace, notice, table, row, text, bytes } from "./dom.js";
import { get } from "./api.js";

function pairs(obj) {
  const entries = Object.entries(obj || {});
  if (!entries.length) return "—";
  return h("ul", { class: "plain" }, entries.map(([k, v]) => h("li", {}, `${k}: ${text(v)}`)));
}

/** Whether a route's `match` selects anything (its empty lists and objects match every report). */
function matches(m) {
  if (!m || typeof m !== "object") return Boolean(m);
  return Object.values(m).some((v) => (Array.isArray(v) ? v.length : v && typeof v === "object" ? Object.keys(v).length : v));
}

function routes(list) {
  if (!(list || []).length) return "—";
  return h(
    "ul",
    { class: "plain" },
    list.map((r) =>
      h("li", {}, h("strong", {}, r.consumer), " ", h("code", {}, text(r.destination)), matches(r.match) ? ` when ${text(r.match)}` : ""),
    ),
  );
}

/** A tenant's limits as an operator reads them (0 or unset means the default, not zero). */
function limits(l) {
  if (!l) return "—";
  return pairs({
    "requests/s": l.requests_per_sec ? `${l.requests_per_sec} (burst ${l.burst})` : "no limit",
    "body": bytes(l.max_body_bytes),
    "queue": l.max_queue_bytes == null ? "an equal share" : bytes(l.max_queue_bytes),
  });
}

function credentials(c) {
  if (!c) return "—";
  const kinds = [];
  if (c.tokens) kinds.push(`${c.tokens} token${c.tokens === 1 ? "" : "s"}`);
  if (c.basic) kinds.push("basic");
  if (c.jwt) kinds.push("JWT");
  return kinds.join(", ") || "none";
}

export default async function tenants(section, signal) {
  replace(section, notice("info", "Loading…"));
  let v;
  try {
    v = await get("/tenants", signal);
  } catch (e) {
    if (e.name !== "AbortError") replace(section, notice("error", e.message));
    return;
  }
  replace(
    section,
    table(
      "Access keys",
      ["Access key", "State", "Credentials", "Limits", "Labels", "Routes", "Reports", "Queue bytes"],
      (v.tenants || []).map((t) =>
        row(
          [
            h("code", {}, t.access_key),
            t.revoked ? h("span", { class: "badge bad" }, "revoked") : h("span", { class: "badge ok" }, "active"),
            credentials(t.credentials),
            limits(t.limits),
            pairs(t.labels),
            routes(t.routes),
            text(t.counters ? t.counters.reports : null),
            t.counters && t.counters.queue_bytes != null ? bytes(t.counters.queue_bytes) : "—",
          ],
          { dataset: { tenant: t.access_key } },
        ),
      ),
    ),
    h("h2", {}, "Routes for every tenant"),
    routes(v.global_routes),
  );
}
