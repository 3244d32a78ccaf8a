// The console's shell: login (form or `#token=`), hash routing between views, logout.

import { h, replace, field, notice } from "./dom.js";
import { token, whenUnauthorized, get } from "./api.js";
import overview from "./view-overview.js";
import consumers from "./view-consumers.js";
import reports from "./view-reports.js";
import deadLetters from "./view-dead-letters.js";
import live from "./view-live.js";
import testDestination from "./view-test.js";
import tenants from "./view-tenants.js";

const VIEWS = {
  overview: { title: "Overview", render: overview },
  consumers: { title: "Consumers", render: consumers },
  reports: { title: "Reports", render: reports },
  "dead-letters": { title: "Dead letters", render: deadLetters },
  live: { title: "Live", render: live },
  test: { title: "Test a destination", render: testDestination },
  tenants: { title: "Tenants", render: tenants },
};

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const menu = document.getElementById("menu-toggle");
const logout = document.getElementById("logout");

/** What the current view left running (timers, streams): stopped when the view changes. */
let leaving = null;

function stopView() {
  if (leaving) leaving.abort();
  leaving = null;
}

/** `#token=...` in the address: kept in this tab's session, then removed from the address. */
function takeTokenFromFragment() {
  const m = /^#token=(.+)$/.exec(location.hash);
  if (!m) return;
  let t;
  try {
    t = decodeURIComponent(m[1]);
  } catch {
    t = m[1]; // a stray `%`: taken as typed
  }
  token.set(t);
  history.replaceState(null, "", location.pathname + location.search + "#/overview");
}

function showChrome(on) {
  nav.hidden = !on;
  menu.hidden = !on;
  logout.hidden = !on;
  document.body.classList.toggle("signed-in", on);
}

function showLogin(message) {
  stopView();
  token.clear();
  showChrome(false);
  document.title = "Log in · data-exporter console";
  const input = h("input", {
    type: "password",
    name: "token",
    // Not a site password: no offer to save it in the browser's password manager.
    autocomplete: "off",
    "data-lpignore": "true",
    required: true,
    spellcheck: "false",
  });
  const status = h("div", { class: "login-status" }, message ? notice("error", message) : null);
  const form = h(
    "form",
    {
      class: "login card",
      "aria-labelledby": "login-title",
      onsubmit: async (e) => {
        e.preventDefault();
        const t = input.value.trim();
        if (!t) return;
        token.set(t);
        replace(status, notice("info", "Checking the token…"));
        try {
          await get("/plugins");
          if (!location.hash.startsWith("#/")) history.replaceState(null, "", "#/overview");
          route();
        } catch (err) {
          token.clear();
          replace(status, notice("error", err.message));
        }
      },
    },
    h("h1", { id: "login-title" }, "Log in"),
    h(
      "p",
      {},
      "Paste the admin token: the content of admin_token_file, or <data_dir>/admin.token when that is unset. " +
        "It stays in this browser tab only (sessionStorage) and is sent as a bearer token to this host's admin API.",
    ),
    field("Admin token", input),
    h("button", { type: "submit", class: "primary" }, "Log in"),
    status,
  );
  replace(main, form);
  input.focus();
}

function currentView() {
  const name = location.hash.replace(/^#\/?/, "").split("?")[0];
  return VIEWS[name] ? name : null;
}

function route() {
  if (!token.get()) {
    showLogin(null);
    return;
  }
  const name = currentView();
  if (!name) {
    location.hash = "#/overview";
    return;
  }
  stopView();
  showChrome(true);
  for (const a of nav.querySelectorAll("a")) {
    if (a.getAttribute("href") === `#/${name}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  menu.setAttribute("aria-expanded", "false");
  nav.classList.remove("open");
  const view = VIEWS[name];
  document.title = `${view.title} · data-exporter console`;
  leaving = new AbortController();
  const section = h("section", { class: "view", "aria-labelledby": "view-title", dataset: { view: name } });
  replace(main, h("h1", { id: "view-title" }, view.title), section);
  view.render(section, leaving.signal);
}

whenUnauthorized((message) => showLogin(message));
menu.addEventListener("click", () => {
  const open = menu.getAttribute("aria-expanded") !== "true";
  menu.setAttribute("aria-expanded", String(open));
  nav.classList.toggle("open", open);
});
logout.addEventListener("click", () => {
  token.clear();
  history.replaceState(null, "", location.pathname);
  showLogin(null);
});
// The skip link moves focus to the view; it is not a route.
document.querySelector(".skip-link").addEventListener("click", (e) => {
  e.preventDefault();
  main.focus();
});
window.addEventListener("hashchange", () => {
  if (location.hash.startsWith("#token=")) takeTokenFromFragment();
  route();
  main.focus();
});

takeTokenFromFragment();
route();
