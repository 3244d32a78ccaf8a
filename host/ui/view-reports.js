// Reports: look up a report id (GET /reports/{id} on the admin API): its tenant, each
// consumer's state and attempts, and its dead letters.

import { h, replace, notice, table, row, field, when, jsonBlock } from "./dom.js";
import { get } from "./api.js";

function state(s) {
  const parts = [];
  if (s.attempts !== undefined) parts.push(`attempts ${s.attempts}`);
  if (s.reason) parts.push(s.reason);
  if (s.blocked_by) parts.push(`blocked: ${s.blocked_by}`);
  if (s.next_attempt_at_ms) parts.push(`next attempt ${when(s.next_attempt_at_ms)}`);
  return parts.join(" · ") || "—";
}

function render(out, r) {
  const consumers = Object.entries(r.consumers || {});
  replace(
    out,
    h("h2", {}, "Report ", h("code", {}, r.id)),
    r.known
      ? null
      : notice("info", "The host no longer tracks this report (finished long ago, or another process's): its dead letters say where it stands."),
    r.tenant ? h("p", {}, "Tenant: ", h("code", {}, r.tenant)) : null,
    table(
      "State per consumer",
      ["Consumer", "Status", "Details"],
      consumers.map(([k, s]) => row([k, h("span", { class: `status ${s.status}` }, s.status), state(s)])),
    ),
    (r.dead_letters || []).length
      ? [h("h3", {}, "Dead letters"), (r.dead_letters || []).map((d) => jsonBlock(d, `Dead letter at ${d.consumer}`))]
      : null,
  );
}

export default function reports(section, signal) {
  const input = h("input", { type: "text", name: "id", required: true, spellcheck: "false", autocomplete: "off" });
  const out = h("div", { class: "result", "aria-live": "polite" });
  const look = async (id) => {
    replace(out, notice("info", "Looking up…"));
    try {
      render(out, await get(`/reports/${encodeURIComponent(id)}`, signal));
    } catch (e) {
      if (e.name !== "AbortError") replace(out, notice("error", e.message));
    }
  };
  const form = h(
    "form",
    {
      class: "inline",
      role: "search",
      onsubmit: (e) => {
        e.preventDefault();
        const id = input.value.trim();
        if (id) look(id);
      },
    },
    field("Report id", input, "The id /forward answered with, or one from Live or Dead letters."),
    h("button", { type: "submit", class: "primary" }, "Look up"),
  );
  replace(section, form, out);
  const m = /[?&]id=([^&]+)/.exec(location.hash);
  if (m) {
    try {
      input.value = decodeURIComponent(m[1]);
    } catch {
      input.value = m[1];
    }
    look(input.value);
  }
}
