// DOM building for the console: every value becomes a text node, never markup.
// (No innerHTML, insertAdjacentHTML or document.write anywhere in the console.)

const SVG = "http://www.w3.org/2000/svg";

/** Append children (nodes, strings as text, arrays flattened; null/undefined/false skipped). */
export function append(parent, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    parent.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return parent;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") {
      el.addEventListener(k.slice(2), v);
    } else if (k === "class") {
      el.className = v;
    } else if (k === "dataset") {
      Object.assign(el.dataset, v);
    } else if (k === "value" || k === "checked" || k === "disabled") {
      el[k] = v;
    } else if (k === "style") {
      throw new Error("inline styles are refused by the console's Content-Security-Policy: use a class");
    } else {
      el.setAttribute(k, v === true ? "" : String(v));
    }
  }
}

/** h("tag", {attr: value, onclick: fn}, ...children): an element, children as text. */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  return append(el, children);
}

/** An SVG element (sparklines). */
export function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  return append(el, children);
}

/** Replace everything in `parent` with `children`. */
export function replace(parent, ...children) {
  parent.replaceChildren();
  return append(parent, children);
}

/** Any JSON value as indented text in a <pre>. */
export function jsonBlock(value, label) {
  return h("pre", { class: "json", tabindex: "0", "aria-label": label || "JSON" }, JSON.stringify(value, null, 2));
}

/** A table that scrolls sideways on narrow screens (a labelled, focusable region). */
export function table(caption, headers, rows) {
  const t = h(
    "table",
    {},
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col" }, x)))),
    h(
      "tbody",
      {},
      rows.length
        ? rows
        : h("tr", {}, h("td", { colspan: String(headers.length), class: "empty" }, "nothing to show")),
    ),
  );
  return h("div", { class: "table-scroll", role: "region", "aria-label": `Table: ${caption}`, tabindex: "0" }, t);
}

/** A row of cells; each cell is a node or a value shown as text. */
export function row(cells, attrs) {
  return h("tr", attrs || {}, cells.map((c) => h("td", {}, c)));
}

/** A definition list of [term, value] pairs. */
export function dl(pairs) {
  return h(
    "dl",
    { class: "pairs" },
    pairs.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v === null || v === undefined ? "—" : v)]),
  );
}

/** A labelled form field: label + control (+ a hint tied by aria-describedby). */
let fieldSeq = 0;
export function field(labelText, control, hint) {
  const id = control.id || `f${++fieldSeq}`;
  control.id = id;
  const parts = [h("label", { for: id }, labelText), control];
  if (hint) {
    const hid = `${id}-hint`;
    control.setAttribute("aria-describedby", hid);
    parts.push(h("p", { class: "hint", id: hid }, hint));
  }
  return h("div", { class: "field" }, parts);
}

/** A status message region (announced to screen readers). */
export function notice(kind, text) {
  return h("p", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}

/** A time in ms since the epoch, as the reader's local time. */
export function when(ms) {
  if (ms === null || ms === undefined) return "—";
  return new Date(ms).toLocaleString();
}

/** A number of bytes, readable. */
export function bytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i ? v.toFixed(1) : v} ${units[i]}`;
}

/** A value shown as text: strings as they are, everything else as JSON. */
export function text(v) {
  if (v === null || v === undefined) return "—";
  return typeof v === "string" ? v : JSON.stringify(v);
}
