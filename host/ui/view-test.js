// Test a destination: a form generated from the chosen plugin's parameter table (GET /plugins),
// secret parameters as password inputs; POST /test/{consumer} sends one synthetic report now
// and the outcome is shown as text.

import { h, replace, notice, field, dl, text } from "./dom.js";
import { get, post } from "./api.js";

/** The control for one parameter (its `type`, `secret`, `default`). */
function control(p) {
  const name = `param-${p.name}`;
  switch (p.type) {
    case "boolean":
      return h(
        "select",
        { name },
        h("option", { value: "" }, p.default === undefined || p.default === null ? "(not set)" : `(default: ${text(p.default)})`),
        h("option", { value: "true" }, "true"),
        h("option", { value: "false" }, "false"),
      );
    case "integer":
    case "number":
      return h("input", {
        type: "number",
        name,
        step: p.type === "integer" ? "1" : "any",
        placeholder: p.default == null ? "" : text(p.default),
      });
    case "object":
    case "array":
      return h("textarea", {
        name,
        rows: "3",
        spellcheck: "false",
        placeholder: p.default == null ? (p.type === "object" ? "{}" : "[]") : JSON.stringify(p.default),
      });
    default:
      return h("input", {
        type: p.secret ? "password" : "text",
        name,
        spellcheck: "false",
        autocomplete: p.secret ? "new-password" : "off",
        placeholder: p.default == null ? "" : text(p.default),
      });
  }
}

/** The destination object of the form's filled fields; throws naming a field that is wrong. */
function destination(params, controls) {
  const dest = {};
  for (const p of params) {
    const raw = controls[p.name].value.trim();
    if (raw === "") continue;
    switch (p.type) {
      case "boolean":
        dest[p.name] = raw === "true";
        break;
      case "integer":
      case "number": {
        const n = Number(raw);
        if (!Number.isFinite(n) || (p.type === "integer" && !Number.isInteger(n))) {
          throw new Error(`${p.name} must be ${p.type === "integer" ? "a whole number" : "a number"}`);
        }
        dest[p.name] = n;
        break;
      }
      case "object":
      case "array":
        try {
          dest[p.name] = JSON.parse(raw);
        } catch (e) {
          throw new Error(`${p.name} must be JSON (${p.type}): ${e.message}`);
        }
        break;
      default:
        dest[p.name] = raw;
    }
  }
  return dest;
}

function outcome(r) {
  const delivered = r.outcome === "delivered";
  return h(
    "article",
    { class: `card outcome ${delivered ? "ok" : "bad"}`, dataset: { outcome: r.outcome } },
    h("h2", {}, delivered ? "Delivered" : `Not delivered: ${r.outcome}`),
    dl([
      ["Consumer", r.consumer],
      ["Plugin", r.plugin],
      ["Report id", r.report_id],
      ["Validation", r.validation == null ? "not reached" : r.validation.ok ? "ok" : `refused: ${r.validation.message}`],
      ["Message", r.message ?? null],
      ["Retry after", r.retry_after_ms == null ? null : `${r.retry_after_ms} ms`],
      ["Latency", `${r.latency_ms} ms`],
    ]),
  );
}

export default async function testDestination(section, signal) {
  replace(section, notice("info", "Loading plugins…"));
  let plugins;
  try {
    plugins = (await get("/plugins", signal)).plugins || [];
  } catch (e) {
    if (e.name !== "AbortError") replace(section, notice("error", e.message));
    return;
  }
  if (!plugins.length) {
    replace(section, notice("info", "No plugin is loaded: put a .wasm file in the plugins directory."));
    return;
  }
  const pick = h(
    "select",
    { name: "consumer" },
    plugins.map((p) => h("option", { value: p.config_key }, `${p.config_key} (${p.name} ${p.version})`)),
  );
  const fields = h("fieldset", { class: "params" });
  const out = h("div", { class: "result", "aria-live": "polite" });
  let controls = {};
  let params = [];
  const build = () => {
    const p = plugins.find((x) => x.config_key === pick.value);
    params = p.parameters || [];
    controls = {};
    replace(
      fields,
      h("legend", {}, `Destination for ${p.config_key}`),
      params.length ? null : h("p", {}, "This plugin declares no parameters: an empty destination is sent."),
      params.map((q) => {
        const c = control(q);
        controls[q.name] = c;
        if (q.required) c.required = true;
        const label = `${q.name}${q.required ? " (required)" : ""}${q.secret ? " (secret)" : ""}`;
        return field(label, c, `${q.type}. ${q.usage || ""}`);
      }),
    );
  };
  pick.addEventListener("change", () => {
    build();
    replace(out);
  });
  const submit = h("button", { type: "submit", class: "primary" }, "Send a test report");
  const form = h(
    "form",
    {
      class: "test-form",
      "aria-label": "Test a destination",
      onsubmit: async (e) => {
        e.preventDefault();
        let dest;
        try {
          dest = destination(params, controls);
        } catch (err) {
          replace(out, notice("error", err.message));
          return;
        }
        submit.disabled = true;
        replace(out, notice("info", "Sending…"));
        try {
          replace(out, outcome(await post(`/test/${encodeURIComponent(pick.value)}`, dest)));
        } catch (err) {
          replace(out, notice("error", err.message));
        } finally {
          submit.disabled = false;
        }
      },
    },
    field("Consumer", pick, "The plugin that sends the test report (its config key)."),
    fields,
    submit,
  );
  replace(
    section,
    h(
      "p",
      {},
      "Sends one synthetic report to this destination through the loaded plugin now: not queued, not retried, under the same allow-list and secret rules as delivery.",
    ),
    form,
    out,
  );
  build();
}
