// Overview: rates per second over the last 15 minutes (sparklines from GET /overview's
// history), totals, queue depth and bytes, each tenant's share of the queue, readiness.

import { h, svg, replace, dl, notice, bytes, when, table, row } from "./dom.js";
import { get } from "./api.js";

const SERIES = [
  ["accepted", "Accepted"],
  ["delivered", "Delivered"],
  ["retried", "Retrying"],
  ["dead_lettered", "Dead-lettered"],
];

/** Per-second rates between neighbouring cumulative samples. */
export function rates(samples, key, everyMs) {
  const out = [];
  for (let i = 1; i < samples.length; i++) {
    const dt = (samples[i].at_ms - samples[i - 1].at_ms || everyMs) / 1000;
    out.push(Math.max(0, (samples[i][key] - samples[i - 1][key]) / dt));
  }
  return out;
}

function sparkline(values, label) {
  const w = 240;
  const hgt = 48;
  const max = Math.max(1e-9, ...values);
  const step = values.length > 1 ? w / (values.length - 1) : w;
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(hgt - (v / max) * (hgt - 4) - 2).toFixed(1)}`);
  return svg(
    "svg",
    { class: "spark", viewBox: `0 0 ${w} ${hgt}`, width: w, height: hgt, role: "img", "aria-label": label },
    svg("title", {}, label),
    values.length > 1
      ? svg("polyline", { points: points.join(" "), fill: "none", stroke: "currentColor", "stroke-width": 2 })
      : svg("line", { x1: 0, y1: hgt - 2, x2: w, y2: hgt - 2, stroke: "currentColor", "stroke-width": 1 }),
  );
}

function fmtRate(v) {
  return v >= 10 ? v.toFixed(0) : v.toFixed(2);
}

function render(section, o) {
  const samples = (o.history && o.history.samples) || [];
  const every = (o.history && o.history.every_ms) || 5000;
  const cards = SERIES.map(([key, title]) => {
    const r = rates(samples, key, every);
    const now = r.length ? r[r.length - 1] : 0;
    const total = o.totals ? o.totals[key] : null;
    const label = `${title} per second over the last ${Math.round((samples.length * every) / 60000)} minutes; now ${fmtRate(now)}/s`;
    return h(
      "article",
      { class: "card metric", dataset: { metric: key } },
      h("h2", {}, title),
      h("p", { class: "big" }, h("span", { class: "rate" }, fmtRate(now)), " /s"),
      sparkline(r, label),
      h("p", { class: "muted" }, `total ${total ?? "—"}`),
    );
  });
  const ready = o.ready || {};
  const queue = o.queue || {};
  const tenants = queue.tenants || [];
  const totalBytes = tenants.reduce((s, t) => s + (t.bytes || 0), 0) || queue.bytes || 0;
  replace(
    section,
    h(
      "div",
      { class: `readiness ${ready.ready ? "ok" : "bad"}`, role: "status" },
      h("strong", {}, ready.ready ? "Ready" : "Not ready"),
      ready.message ? [": ", ready.message] : null,
    ),
    h("div", { class: "cards" }, cards),
    h(
      "div",
      { class: "cols" },
      h(
        "article",
        { class: "card" },
        h("h2", {}, "Queue"),
        dl([
          ["Reports waiting", String(queue.depth ?? "—")],
          ["Bytes", bytes(queue.bytes)],
          ["Oldest waiting", queue.oldest_age_seconds == null ? "—" : `${Number(queue.oldest_age_seconds).toFixed(1)} s`],
          ["Dead letters held", String(o.dead_letters ? o.dead_letters.count : "—")],
          ["Rejected requests", String(o.totals ? o.totals.rejected : "—")],
        ]),
      ),
      h(
        "article",
        { class: "card" },
        h("h2", {}, "Queue share by tenant"),
        table(
          "Queue bytes per tenant",
          ["Tenant", "Bytes", "Share"],
          tenants.map((t) => {
            const share = totalBytes ? t.bytes / totalBytes : 0;
            return row([
              t.tenant,
              bytes(t.bytes),
              h(
                "span",
                { class: "share" },
                h("meter", { min: "0", max: "1", value: String(share), "aria-label": `share of ${t.tenant}` }),
                ` ${(share * 100).toFixed(0)} %`,
              ),
            ]);
          }),
        ),
      ),
    ),
    h("p", { class: "muted" }, `As of ${when(o.at_ms)}; refreshed every 2 s; rates from samples every ${every / 1000} s.`),
  );
}

export default function overview(section, signal) {
  replace(section, notice("info", "Loading…"));
  const load = async () => {
    try {
      const o = await get("/overview", signal);
      if (!signal.aborted) render(section, o);
    } catch (e) {
      if (!signal.aborted && e.name !== "AbortError") replace(section, notice("error", e.message));
    }
  };
  // The next load 2 s after the last one answered: never two at once on a slow host.
  let timer;
  const loop = async () => {
    await load();
    if (!signal.aborted) timer = setTimeout(loop, 2000);
  };
  loop();
  signal.addEventListener("abort", () => clearTimeout(timer));
}
