// Live: GET /tap streamed with fetch (JSON lines; EventSource cannot send a bearer token),
// filtered by consumer, tenant and label. Pause keeps the stream running and the view still:
// events that arrive meanwhile are held and counted, and shown on resume.

import { h, replace, notice, field, text, when } from "./dom.js";
import { streamLines, query } from "./api.js";

const KEEP = 200;

function eventRow(e) {
  return h(
    "tr",
    { dataset: { report: e.report, outcome: e.outcome } },
    h("td", {}, when(e.at_ms)),
    h("td", {}, h("a", { href: `#/reports?id=${encodeURIComponent(e.report)}` }, e.report)),
    h("td", {}, e.consumer),
    h("td", {}, e.tenant ?? "—"),
    h("td", {}, h("span", { class: `status ${e.outcome}` }, e.outcome)),
    h("td", {}, `${e.latency_ms} ms`),
    h("td", {}, String(e.attempt)),
    h("td", {}, h("code", {}, text(e.destination))),
    h("td", {}, e.reason ?? "—"),
  );
}

export default function live(section, signal) {
  const inputs = {
    consumer: h("input", { type: "text", name: "consumer", spellcheck: "false", autocomplete: "off" }),
    tenant: h("input", { type: "text", name: "tenant", spellcheck: "false", autocomplete: "off" }),
    label: h("input", { type: "text", name: "label", spellcheck: "false", autocomplete: "off", placeholder: "name=value" }),
  };
  const tbody = h("tbody", {});
  const state = h("p", { class: "live-state", role: "status" });
  const pauseBtn = h("button", { type: "button", "aria-pressed": "false" }, "Pause");
  let paused = false;
  let held = [];
  // Events that arrived while paused (held keeps the newest KEEP of them).
  let arrived = 0;
  let seen = 0;
  let lost = 0;
  let stream = null;
  let open = false;

  const say = (msg) => replace(state, msg);
  const status = () => {
    if (paused) say(`Paused: ${arrived} events arrived meanwhile (the newest ${Math.min(arrived, KEEP)} shown on resume). ${seen} seen in all.`);
    else if (!open) say("Connecting…");
    else say(`Watching: ${seen} events seen${lost ? `, ${lost} lost while this viewer fell behind` : ""}.`);
  };
  const show = (e) => {
    tbody.prepend(eventRow(e));
    while (tbody.children.length > KEEP) tbody.lastChild.remove();
  };
  const onLine = (e) => {
    if (e.lagged !== undefined && e.end === undefined) {
      lost += e.lagged;
    } else if (e.end !== undefined) {
      return;
    } else {
      seen++;
      // Held while paused, at most what the table keeps: older ones would be dropped anyway.
      if (paused) {
        arrived++;
        held.push(e);
        if (held.length > KEEP) held.shift();
      } else show(e);
    }
    status();
  };

  const start = () => {
    if (stream) stream.abort();
    stream = new AbortController();
    const mine = stream;
    signal.addEventListener("abort", () => mine.abort(), { signal: mine.signal });
    const params = {
      consumer: inputs.consumer.value.trim(),
      tenant: inputs.tenant.value.trim(),
      label: inputs.label.value.trim(),
      limit: 10000,
      wait: "10m",
    };
    open = false;
    delete section.dataset.watching;
    status();
    (async () => {
      // The tap ends after `limit` events or `wait`: start it again until the view is left.
      while (!mine.signal.aborted) {
        const began = Date.now();
        try {
          await streamLines(`/tap${query(params)}`, mine.signal, onLine, () => {
            open = true;
            section.dataset.watching = "true";
            status();
          });
        } catch (e) {
          if (e.name === "AbortError" || mine.signal.aborted) return;
          say(notice("error", e.message));
          return;
        }
        // A stream that ended at once (the host shutting down): wait a little before the next.
        if (Date.now() - began < 1000) await new Promise((r) => setTimeout(r, 1000));
      }
    })();
  };

  pauseBtn.addEventListener("click", () => {
    paused = !paused;
    pauseBtn.setAttribute("aria-pressed", String(paused));
    pauseBtn.textContent = paused ? "Resume" : "Pause";
    if (!paused) {
      for (const e of held) show(e);
      held = [];
      arrived = 0;
    }
    status();
  });

  replace(
    section,
    h(
      "form",
      {
        class: "filters",
        role: "search",
        "aria-label": "Filter live events",
        onsubmit: (e) => {
          e.preventDefault();
          tbody.replaceChildren();
          held = [];
          arrived = 0;
          seen = 0;
          start();
        },
      },
      field("Consumer", inputs.consumer, "A config key; empty for all."),
      field("Tenant", inputs.tenant, "An access key; empty for all."),
      field("Label", inputs.label, "name=value of a tenant label; empty for all."),
      h("button", { type: "submit", class: "primary" }, "Apply filters"),
    ),
    h("div", { class: "actions" }, pauseBtn, state),
    h(
      "p",
      { class: "muted" },
      "Each delivery attempt as it settles, newest first (the last 200 kept). Destinations show secrets as *** and URLs cut to their origin, as the tap command does.",
    ),
    h(
      "div",
      { class: "table-scroll", role: "region", "aria-label": "Live events", tabindex: "0" },
      h(
        "table",
        { class: "live" },
        h("caption", {}, "Live events"),
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            ["Time", "Report", "Consumer", "Tenant", "Outcome", "Latency", "Attempt", "Destination", "Reason"].map((x) =>
              h("th", { scope: "col" }, x),
            ),
          ),
        ),
        tbody,
      ),
    ),
  );
  start();
}
