// Consumers: each loaded plugin (GET /plugins) and each live destination (GET /destinations);
// release quarantined plugins (POST /plugins/reload).

import { h, replace, notice, table, row, dl, jsonBlock, text, when } from "./dom.js";
import { get, post } from "./api.js";

function parameters(list, caption) {
  return table(
    caption,
    ["Name", "Type", "Required", "Default", "Secret", "Usage"],
    (list || []).map((p) => row([p.name, p.type, p.required ? "yes" : "no", text(p.default), p.secret ? "yes" : "no", p.usage])),
  );
}

function plugin(p) {
  const crash = p.last_crash;
  return h(
    "article",
    { class: `card plugin${p.quarantined ? " quarantined" : ""}`, dataset: { plugin: p.config_key } },
    h("h3", {}, p.config_key, " ", h("span", { class: "muted" }, `(${p.name} ${p.version})`)),
    p.quarantined ? h("p", { class: "badge bad" }, "Quarantined") : h("p", { class: "badge ok" }, "Serving"),
    p.description ? h("p", {}, p.description) : null,
    dl([
      ["File", p.file],
      ["SHA-256", p.sha256],
      ["Contract", text(p.contract)],
      ["Instances (in use / at most)", p.limits ? `${text(p.instances_in_use)} / ${text(p.limits.max_instances)}` : null],
      ["Consecutive crashes", text(p.consecutive_crashes)],
      ["Last crash", crash ? text(crash) : "none"],
    ]),
    h("details", {}, h("summary", {}, "Parameters"), parameters(p.parameters, `Destination parameters of ${p.config_key}`)),
    (p.settings || []).length
      ? h("details", {}, h("summary", {}, "Settings"), parameters(p.settings, `Settings of ${p.config_key}`))
      : null,
    h("details", {}, h("summary", {}, "Grants and limits"), jsonBlock(p.limits, `Limits of ${p.config_key}`)),
  );
}

function destinations(list) {
  return table(
    "Live destinations",
    ["Consumer", "Plugin", "Destination", "Waiting", "Batches", "Delivered", "Failed", "Latency", "Last error", "Next retry"],
    list.map((d) =>
      row([
        d.consumer,
        d.plugin,
        h("code", {}, text(d.destination)),
        text(d.waiting),
        text(d.batches),
        text(d.delivered),
        text(d.failed),
        d.last_latency_ms == null ? "—" : `${d.last_latency_ms} ms`,
        d.last_error ? `${d.last_error} (${when(d.last_error_at_ms)})` : "—",
        d.next_retry_at_ms ? when(d.next_retry_at_ms) : "—",
      ]),
    ),
  );
}

export default function consumers(section, signal) {
  const result = h("div", { class: "result", "aria-live": "polite" });
  const plugins = h("div", { class: "plugins" }, notice("info", "Loading plugins…"));
  const dests = h("div", { class: "destinations" }, notice("info", "Loading destinations…"));
  const release = h(
    "button",
    {
      type: "button",
      class: "primary",
      dataset: { action: "release" },
      onclick: async () => {
        release.disabled = true;
        try {
          const r = await post("/plugins/reload", {});
          const released = r.released || [];
          replace(
            result,
            notice(
              "ok",
              released.length
                ? `Released from quarantine: ${released.join(", ")}. Plugins loaded: ${(r.loaded || []).length}.`
                : `Reloaded; nothing was quarantined. Plugins loaded: ${(r.loaded || []).length}.`,
            ),
          );
          load();
        } catch (e) {
          replace(result, notice("error", e.message));
        } finally {
          release.disabled = false;
        }
      },
    },
    "Release quarantines (reload plugins)",
  );
  const load = async () => {
    try {
      const v = await get("/plugins", signal);
      const failed = v.failed || [];
      replace(
        plugins,
        h("p", { class: "muted" }, `Plugins directory: ${text(v.dir)}`),
        (v.plugins || []).map(plugin),
        failed.length
          ? table("Files that failed to load", ["File", "Error"], failed.map((f) => row([f.file, f.error])))
          : null,
        (v.conflicts || []).length
          ? table("Contested config keys", ["Config key", "Message"], v.conflicts.map((c) => row([c.config_key, c.message])))
          : null,
      );
    } catch (e) {
      if (e.name !== "AbortError") replace(plugins, notice("error", e.message));
    }
    try {
      const d = await get("/destinations", signal);
      replace(dests, destinations(d.destinations || []));
    } catch (e) {
      if (e.name !== "AbortError") replace(dests, notice("error", `Destinations: ${e.message}`));
    }
  };
  replace(
    section,
    h("div", { class: "actions" }, release, result),
    h("h2", {}, "Plugins"),
    plugins,
    h("h2", {}, "Destinations"),
    dests,
  );
  load();
}
