// Dead letters: the list with filters (GET /dlq?consumer=&reason=&tenant=&older_than=&newer_than=),
// one shown whole (GET /dlq/{id}), replay selected or all matching (POST /dlq/replay), purge
// with a typed confirmation (POST /dlq/purge).

import { h, replace, notice, table, row, field, when, jsonBlock, dl, bytes } from "./dom.js";
import { get, post, query } from "./api.js";

const FILTERS = [
  ["consumer", "Consumer", "A config key, e.g. openSearch."],
  ["reason", "Reason contains", "Part of the reason text."],
  ["tenant", "Tenant", "An access key."],
  ["older_than", "Older than", "A duration such as 10m or 2h."],
  ["newer_than", "Newer than", "A duration such as 10m or 2h."],
];

export default function deadLetters(section, signal) {
  const inputs = Object.fromEntries(
    FILTERS.map(([k]) => [k, h("input", { type: "text", name: k, spellcheck: "false", autocomplete: "off" })]),
  );
  const list = h("div", { class: "dlq-list" }, notice("info", "Loading…"));
  const detail = h("div", { class: "dlq-detail", "aria-live": "polite" });
  const result = h("div", { class: "result", "aria-live": "polite" });
  // Selected dead letters, each a report at one consumer: `id consumer`.
  let selected = new Set();
  const key = (e) => `${e.id} ${e.consumer}`;
  let shown = [];
  // The filters the list was loaded with: what "all matching" means (not what is typed since).
  let applied = {};
  // Most dead letters listed at once (the count says how many matched).
  const LIMIT = 500;

  const matching = () => {
    const m = {};
    for (const [k] of FILTERS) if (inputs[k].value.trim()) m[k] = inputs[k].value.trim();
    return m;
  };

  const show = async (id) => {
    replace(detail, notice("info", "Loading…"));
    try {
      const d = await get(`/dlq/${encodeURIComponent(id)}`, signal);
      replace(
        detail,
        h("h2", { id: "dlq-detail-title" }, "Dead letter ", h("code", {}, d.id)),
        d.entries.map((e) =>
          h(
            "article",
            { class: "card", dataset: { consumer: e.consumer } },
            h("h3", {}, e.consumer),
            dl([
              ["Reason", e.reason],
              ["Attempts", String(e.attempts)],
              ["Received", when(e.received_at_ms)],
              ["Dead since", when(e.dead_at_ms)],
              ["Tenant", e.tenant ?? null],
            ]),
            h("h4", {}, "Destination (secrets hidden)"),
            jsonBlock(e.destination, "Destination"),
            h("h4", {}, "Payload"),
            jsonBlock(e.payload, "Payload"),
          ),
        ),
      );
      detail.querySelector("h2").setAttribute("tabindex", "-1");
      detail.querySelector("h2").focus();
    } catch (e) {
      if (e.name !== "AbortError") replace(detail, notice("error", e.message));
    }
  };

  const load = async () => {
    try {
      const filters = matching();
      const v = await get(`/dlq${query({ ...filters, limit: LIMIT })}`, signal);
      applied = filters;
      shown = v.entries || [];
      selected = new Set(shown.map(key).filter((k) => selected.has(k)));
      replace(
        list,
        h(
          "p",
          { class: "muted", dataset: { count: String(v.count) } },
          `${v.count} dead letters held (${bytes(v.bytes)}); ${v.matched} matching, ${shown.length} shown.`,
        ),
        table(
          "Dead letters",
          ["Select", "Report id", "Consumer", "Tenant", "Attempts", "Dead since", "Reason"],
          shown.map((e) => {
            const box = h("input", {
              type: "checkbox",
              checked: selected.has(key(e)),
              "aria-label": `select ${e.id} at ${e.consumer}`,
              onchange: () => (box.checked ? selected.add(key(e)) : selected.delete(key(e))),
            });
            return row(
              [
                box,
                h("button", { type: "button", class: "link", onclick: () => show(e.id) }, e.id),
                e.consumer,
                e.tenant ?? "—",
                String(e.attempts),
                when(e.dead_at_ms),
                e.reason,
              ],
              { dataset: { id: e.id } },
            );
          }),
        ),
      );
    } catch (e) {
      if (e.name !== "AbortError") replace(list, notice("error", e.message));
    }
  };

  const act = async (what, body) => {
    try {
      const r = await post(`/dlq/${what}`, body);
      replace(
        result,
        notice("ok", what === "replay" ? `Replayed ${r.replayed}: queued again through the plugin loaded now.` : `Purged ${r.purged}.`),
      );
      selected.clear();
      load();
    } catch (e) {
      replace(result, notice("error", e.message));
    }
  };
  const selection = (all) => {
    if (all) return Object.keys(applied).length ? { matching: applied } : { all: true };
    const letters = [...selected].map((k) => {
      const [id, ...consumer] = k.split(" ");
      return { id, consumer: consumer.join(" ") };
    });
    return { letters };
  };
  // With no filter applied, "all matching" is every dead letter: said, and confirmed, first.
  const replayMatching = () => {
    if (Object.keys(applied).length) return act("replay", selection(true));
    replace(
      result,
      notice("info", "No filter is applied: this replays every dead letter held."),
      h(
        "button",
        { type: "button", dataset: { action: "replay-everything" }, onclick: () => act("replay", { all: true }) },
        "Replay every dead letter",
      ),
    );
  };
  const needSelection = (f) => () => {
    if (!selected.size) replace(result, notice("error", "Select dead letters first (the boxes in the first column)."));
    else f();
  };

  const confirmInput = h("input", { type: "text", name: "confirm", autocomplete: "off", spellcheck: "false" });
  const purgeScope = h(
    "select",
    { name: "scope" },
    h("option", { value: "selected" }, "the selected dead letters"),
    h("option", { value: "matching" }, "all dead letters matching the applied filters (all, without one)"),
  );
  const purgeForm = h(
    "form",
    {
      class: "purge card",
      "aria-labelledby": "purge-title",
      onsubmit: (e) => {
        e.preventDefault();
        if (confirmInput.value.trim() !== "purge") {
          replace(result, notice("error", "Type the word purge to confirm: purged dead letters are gone for good."));
          return;
        }
        const all = purgeScope.value === "matching";
        if (!all && !selected.size) {
          replace(result, notice("error", "Select dead letters first (the boxes in the first column)."));
          return;
        }
        confirmInput.value = "";
        act("purge", selection(all));
      },
    },
    h("h2", { id: "purge-title" }, "Purge"),
    field("Purge", purgeScope),
    field("Type purge to confirm", confirmInput, "Purged dead letters cannot be replayed or recovered."),
    h("button", { type: "submit", class: "danger" }, "Purge"),
  );

  replace(
    section,
    h(
      "form",
      {
        class: "filters",
        role: "search",
        "aria-label": "Filter dead letters",
        onsubmit: (e) => {
          e.preventDefault();
          load();
        },
      },
      FILTERS.map(([k, label, hint]) => field(label, inputs[k], hint)),
      h("button", { type: "submit", class: "primary" }, "Filter"),
    ),
    h(
      "div",
      { class: "actions" },
      h(
        "button",
        { type: "button", dataset: { action: "replay-selected" }, onclick: needSelection(() => act("replay", selection(false))) },
        "Replay selected",
      ),
      h(
        "button",
        { type: "button", dataset: { action: "replay-matching" }, onclick: replayMatching },
        "Replay all matching",
      ),
    ),
    result,
    list,
    detail,
    purgeForm,
  );
  load();
}
