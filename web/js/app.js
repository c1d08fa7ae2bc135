// The app shell: who is logged in, which screen shows, the header.
//
// Screens are modules with `mount(container, context)`, which may return a
// function that stops what they started (timers). The login cookie is
// HttpOnly, so the app learns who is calling from GET /v1/ui-config; it
// never probes admin routes. A user login never opens an admin screen (and
// an admin screen would get 403 anyway).

import { get, post } from "./api.js";
import { h, notice, show, toast } from "./ui.js";

const SCREENS = {
  "/login": { load: () => import("./login.js"), title: "Log in", public: true },
  "/portal": { load: () => import("./portal.js"), title: "My desktops" },
  "/admin/agents": { load: () => import("./admin-agents.js"), title: "Agents", admin: true },
  "/admin/sessions": { load: () => import("./admin-sessions.js"), title: "Sessions", admin: true },
  "/admin/servers": { load: () => import("./admin-servers.js"), title: "Servers", admin: true },
  "/admin/audit": { load: () => import("./admin-audit.js"), title: "Audit", admin: true },
};
const ADMIN_NAV = [
  ["/admin/agents", "Agents"],
  ["/admin/sessions", "Sessions"],
  ["/admin/servers", "Servers"],
  ["/admin/audit", "Audit"],
  ["/portal", "My desktops"],
];

const state = { me: null, stop: null, message: null };

function home() {
  return state.me?.admin ? "/admin/agents" : "/portal";
}

// Who the login cookie is, from the public ui-config (which says null
// rather than 401, so opening the UI logged out refuses nothing).
async function whoAmI() {
  const config = await get("/v1/ui-config");
  return config.user ? { user: config.user, admin: Boolean(config.admin) } : null;
}

function renderHeader(path) {
  const header = document.getElementById("top");
  header.hidden = !state.me;
  if (!state.me) return;
  const links = state.me.admin ? ADMIN_NAV : [["/portal", "My desktops"]];
  show(
    document.getElementById("nav"),
    h(
      "ul",
      {},
      links.map(([href, label]) =>
        h("li", {}, h("a", { href, "data-link": true, "aria-current": href === path ? "page" : null }, label)),
      ),
    ),
  );
  document.getElementById("who").textContent = state.me.admin ? `${state.me.user} (admin)` : state.me.user;
}

// Show the screen of `path` (pushing it to the history unless `replace`).
export async function navigate(path, { replace = false, message = null } = {}) {
  if (message) state.message = message;
  let target = path === "/" || path === "/admin" ? home() : path;
  let screen = SCREENS[target];
  if (!screen) {
    target = home();
    screen = SCREENS[target];
  }
  if (!screen.public && !state.me) {
    target = "/login";
    screen = SCREENS[target];
  } else if (target === "/login" && state.me) {
    target = home();
    screen = SCREENS[target];
  }
  if (screen.admin && !state.me.admin) {
    target = "/portal";
    screen = SCREENS[target];
    state.message = state.message ?? "That page is for administrators: log in as one to see it.";
  }
  // A reload, a shared link or Back keeps the query of the screen it shows
  // (the Audit screen's filters); a link to a screen opens it without one.
  const search = replace && target === window.location.pathname ? window.location.search : "";
  const url = target + search;
  if (replace || url !== window.location.pathname + window.location.search) {
    const method = replace || target !== path ? "replaceState" : "pushState";
    history[method](null, "", url);
  }
  if (state.stop) {
    state.stop();
    state.stop = null;
  }
  renderHeader(target);
  document.title = `${screen.title} · dcvix`;
  const main = document.getElementById("main");
  const module = await screen.load();
  const shown = state.message;
  state.message = null;
  show(main, shown ? notice(shown, "info") : null);
  const context = { me: state.me, navigate, loggedIn };
  state.stop = (await module.mount(main, context)) || null;
  if (!main.contains(document.activeElement)) main.focus({ preventScroll: true });
}

// After a successful login: learn who we are and go to their home screen.
async function loggedIn() {
  state.me = await whoAmI();
  await navigate(home(), { replace: true });
}

async function logout() {
  try {
    await post("/v1/logout");
  } catch (error) {
    toast(error.message, "error");
  }
  state.me = null;
  await navigate("/login", { replace: true, message: "You are logged out." });
}

function followLinks(event) {
  const link = event.target.closest("a[data-link]");
  if (!link || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
  event.preventDefault();
  navigate(new URL(link.href).pathname);
}

async function start() {
  document.addEventListener("click", followLinks);
  document.getElementById("logout").addEventListener("click", logout);
  window.addEventListener("popstate", () => navigate(window.location.pathname, { replace: true }));
  window.addEventListener("dcvix:expired", () => {
    // Once: a screen's next refresh must not stack messages or loop.
    if (!state.me) return;
    state.me = null;
    navigate("/login", { replace: true, message: "Your login has expired. Please log in again." });
  });
  try {
    state.me = await whoAmI();
  } catch (error) {
    state.message = error.message;
  }
  await navigate(window.location.pathname, { replace: true });
}

start();
