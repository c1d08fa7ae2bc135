// The user portal: the workstations and pools the policy grants, the
// caller's own sessions, and the ways to connect to them.
//
// Everything comes from the user API (an admin's login serves it too, and
// reaches only what users.json grants that admin as a user). Cards are kept
// by key across refreshes, so auto-refresh never steals the focus, resets a
// chosen session type or wipes a message.
//
// Connection tokens are fetched at the moment of a click and never shown:
// "Open in browser" hands the DCV web client's address straight to a new
// tab; "Download .dcv" is a plain link whose answer is an attachment, so the
// token goes from the director to the file without passing through the page.

import { ApiError, del, get, post, query } from "./api.js";
import { autoRefresh, confirmAction, field, formatBytes, formatTime, h, notice, show, toast } from "./ui.js";

const ALLOW_CUSTOM = "ALLOW_CUSTOM";
const TYPES = [
  ["console", "Console"],
  ["virtual", "Virtual"],
];

function typeName(type) {
  const found = TYPES.find(([value]) => value === String(type).toLowerCase());
  return found ? found[1] : String(type || "Unknown");
}

// ---------------------------------------------------------------- messages

// A sentence for a failed session request, `target` naming where it went:
// {serverId} or {poolId}.
function explainStart(error, target, type) {
  if (!(error instanceof ApiError)) return "Something went wrong. Please try again.";
  const where = target.poolId ? `pool ${target.poolId}` : target.serverId;
  const text = error.message.toLowerCase();
  switch (error.status) {
    case 0:
      return error.message;
    case 400:
      return `The ${type} session could not be started: ${error.message}.`;
    case 403:
      return `You are not allowed to use ${where}. Ask your administrator for access.`;
    case 404:
      return `There is no server called ${target.serverId}. Check the name.`;
    case 409:
      if (text.includes("offline")) return `${where} is offline. Try again when it is back online.`;
      if (text.includes("console")) {
        return `The console of ${where} is in use by someone else. Start a virtual session, or try another workstation.`;
      }
      return `${where} cannot take the session now: ${error.message}`;
    case 503:
      if (text.includes("console")) {
        return `Every console in ${where} is in use. Start a virtual session, or try again later.`;
      }
      return `No workstation of ${where} is online right now. Try again later.`;
    case 502:
    case 504:
      return `The agent of ${where} did not manage to start a ${type} session (${error.message}). Try again.`;
    default:
      return error.message;
  }
}

// A sentence for a failed action on an existing session.
function explainSession(error, session) {
  if (!(error instanceof ApiError)) return "Something went wrong. Please try again.";
  switch (error.status) {
    case 0:
      return error.message;
    case 403:
      return `You are no longer allowed to use ${session.server_id}. Ask your administrator.`;
    case 404:
      return `Session ${session.id} is gone: it was closed, or ${session.server_id} went offline.`;
    case 409:
      return `${session.server_id} cannot do that now: ${error.message}`;
    case 502:
    case 504:
      return `The agent of ${session.server_id} did not answer (${error.message}). Try again.`;
    default:
      return error.message;
  }
}

// ---------------------------------------------------------------- pieces

// A list whose items are kept by key: `build(row)` makes {element,
// update(row)} once per key; later updates only refresh the item.
function keyedList(list, build) {
  const items = new Map();
  return function update(rows, keyOf) {
    const seen = new Set();
    let previous = null;
    for (const row of rows) {
      const key = keyOf(row);
      seen.add(key);
      let item = items.get(key);
      if (!item) {
        item = build(row);
        items.set(key, item);
      }
      item.update(row);
      const expected = previous ? previous.nextSibling : list.firstChild;
      if (expected !== item.element) list.insertBefore(item.element, expected);
      previous = item.element;
    }
    for (const [key, item] of items) {
      if (!seen.has(key)) {
        item.element.remove();
        items.delete(key);
      }
    }
    return items;
  };
}

function typeSelect() {
  return h(
    "select",
    { name: "sessionType" },
    TYPES.map(([value, label]) => h("option", { value }, label)),
  );
}

function onlineBadge(online) {
  return online ? h("span", { class: "badge ok" }, "Online") : h("span", { class: "badge bad" }, "Offline");
}

function memory(free, total) {
  if (!total) return h("span", { class: "muted" }, "unknown");
  const used = Math.min(100, Math.max(0, Math.round(((total - free) / total) * 10) * 10));
  return h(
    "span",
    { class: "portal-memory" },
    h("span", { class: `bar w${used}`, "aria-hidden": "true" }, h("span")),
    `${formatBytes(free)} free of ${formatBytes(total)}`,
  );
}

// ---------------------------------------------------------------- screen

export async function mount(container) {
  let stopped = false;
  let loaded = false;
  let loading = null;
  let again = false;
  let shownError = "";
  let lastSessions = [];
  // After a start, the session whose "Open in browser" should get the focus.
  let focusNext = null;

  const problem = h("div", { class: "portal-problem" });
  const updated = h("span", { class: "muted" });
  const refreshButton = h("button", { type: "button", class: "secondary", onclick: () => refresh() }, "Refresh");
  const refresher = autoRefresh(() => refresh());

  const sessionsHeading = h("h2", { id: "portal-sessions", tabindex: "-1" }, "My sessions");
  const sessionList = h("ul", { class: "cards portal-list", "aria-labelledby": "portal-sessions" });
  const sessionsEmpty = h(
    "p",
    { class: "muted", hidden: true },
    "You have no sessions. Start one in a pool or on a workstation below.",
  );
  const poolsSection = h("section", { "aria-labelledby": "portal-pools", hidden: true });
  const poolList = h("ul", { class: "cards portal-list", "aria-labelledby": "portal-pools" });
  const stationsSection = h("section", { "aria-labelledby": "portal-workstations", hidden: true });
  const stationList = h("ul", { class: "cards portal-list", "aria-labelledby": "portal-workstations" });
  const nothing = h(
    "p",
    { class: "notice info", hidden: true },
    "No workstation or pool is granted to you yet. Ask your administrator for access.",
  );
  const loadingText = h("p", { class: "loading" }, "Loading…");

  poolsSection.append(
    h("h2", { id: "portal-pools" }, "Pools"),
    h("p", { class: "muted" }, "A pool starts your session on its best free workstation."),
    poolList,
  );
  const customList = h("ul", { class: "cards portal-list portal-custom", hidden: true }, customCard());

  stationsSection.append(h("h2", { id: "portal-workstations" }, "Workstations"), stationList, customList);

  container.append(
    h(
      "div",
      { class: "portal" },
      h("h1", {}, "My desktops"),
      h(
        "p",
        { class: "muted" },
        "Start a desktop session, then connect to it in your browser or with the DCV client (download the .dcv file and open it).",
      ),
      h("div", { class: "toolbar" }, refreshButton, refresher.element, updated),
      problem,
      loadingText,
      h("section", { "aria-labelledby": "portal-sessions" }, sessionsHeading, sessionsEmpty, sessionList),
      poolsSection,
      stationsSection,
      nothing,
    ),
  );

  // ------------------------------------------------------------ starting

  async function start(target, type, button, report) {
    report(null);
    const label = button.textContent;
    button.disabled = true;
    button.textContent = "Starting…";
    const known = new Set(lastSessions.map((s) => `${s.server_id}\n${s.id}`));
    try {
      const answer = await post("/v1/user/sessions", { ...target, sessionType: type });
      if (stopped) return;
      const resumed = known.has(`${answer.serverId}\n${answer.sessionID}`);
      toast(
        resumed
          ? `Your ${type} session on ${answer.serverId} is still running: connect to it under My sessions.`
          : `Your ${type} session on ${answer.serverId} is ready: connect to it under My sessions.`,
      );
      focusNext = `${answer.serverId}\n${answer.sessionID}`;
      await refresh();
    } catch (error) {
      if (!stopped) report(explainStart(error, target, type));
    } finally {
      button.disabled = false;
      button.textContent = label;
    }
  }

  // A start form: a session type and a button; `target()` says where.
  function startForm(name, target, extra = null) {
    const select = typeSelect();
    const button = h("button", { type: "submit", class: "primary", "aria-label": `Start or resume: ${name}` }, "Start or resume");
    const message = h("div", { class: "portal-message" });
    const report = (text) => show(message, text ? notice(text) : null);
    const form = h(
      "form",
      {
        class: "portal-start",
        "aria-label": `Start a session: ${name}`,
        onsubmit: (event) => {
          event.preventDefault();
          const where = target();
          if (!where) return;
          start(where, select.value, button, report);
        },
      },
      extra,
      field("Session type", select),
      h("div", { class: "actions" }, button),
    );
    return { form, message, report };
  }

  function poolCard(pool) {
    const heading = h("h3", {}, `Pool ${pool.id}`);
    const info = h("div");
    const { form, message } = startForm(`pool ${pool.id}`, () => ({ poolId: pool.id }));
    const element = h("li", { class: "card", dataset: { pool: pool.id } }, heading, info, form, message);
    return {
      element,
      update(row) {
        const counts = new Map();
        for (const s of row.mine) counts.set(s.server, (counts.get(s.server) ?? 0) + 1);
        const mine = counts.size
          ? [...counts].map(([server, count]) => `${count} on ${server}`).join(", ")
          : "none";
        show(
          info,
          h(
            "dl",
            { class: "details" },
            h("dt", {}, "State"),
            h(
              "dd",
              {},
              h("span", { class: `badge ${row.online > 0 ? "ok" : "bad"}` }, `${row.online} of ${row.members} online`),
            ),
            h("dt", {}, "Your sessions"),
            h("dd", { class: row.mine.length ? null : "muted" }, mine),
          ),
        );
      },
    };
  }

  function stationCard(station) {
    const heading = h("h3", {}, station.hostname);
    const info = h("div");
    const { form, message } = startForm(station.hostname, () => ({ serverId: station.hostname }));
    const element = h("li", { class: "card", dataset: { server: station.hostname } }, heading, info, form, message);
    return {
      element,
      update(row) {
        show(
          info,
          h(
            "dl",
            { class: "details" },
            h("dt", {}, "State"),
            h("dd", {}, onlineBadge(row.online)),
            h("dt", {}, "Free memory"),
            h("dd", {}, memory(row.freeMemory, row.totalMemory)),
            h("dt", {}, "Sessions"),
            h("dd", {}, row.online ? `${row.sessionCount} in total, ${row.sessions.length} yours` : "—"),
            row.pools.length ? [h("dt", {}, "Pools"), h("dd", {}, row.pools.join(", "))] : null,
          ),
        );
      },
    };
  }

  function customCard() {
    const input = h("input", {
      name: "server",
      required: true,
      autocomplete: "off",
      autocapitalize: "none",
      spellcheck: "false",
      maxlength: "253",
    });
    const { form, message } = startForm(
      "another server",
      () => {
        const name = input.value.trim();
        if (!name) {
          input.focus();
          return null;
        }
        return { serverId: name };
      },
      field("Server name", input, "Any server registered with the director."),
    );
    return h("li", { class: "card", dataset: { custom: "" } }, h("h3", {}, "Other server"), form, message);
  }

  // ------------------------------------------------------------ sessions

  async function openInBrowser(session, button, report) {
    report(null);
    // Opened now, while the click still counts as one (a tab opened after
    // the token arrives may be blocked); cut from this page at once.
    const tab = window.open("", "_blank");
    if (!tab) {
      report("Your browser blocked the new tab. Allow pop-ups for this site, then try again.");
      return;
    }
    tab.opener = null;
    button.disabled = true;
    try {
      const { webUrl } = await get(
        `/v1/user/connectiontoken${query({ serverId: session.server_id, sessionId: session.id })}`,
      );
      // replace(): no blank page left in the tab's history.
      tab.location.replace(webUrl);
    } catch (error) {
      tab.close();
      if (stopped) return;
      report(explainSession(error, session));
      if (error instanceof ApiError && error.status === 404) refresh();
    } finally {
      button.disabled = false;
    }
  }

  async function closeSession(session, buttons, report) {
    report(null);
    const confirmed = await confirmAction({
      title: "Close this session?",
      message: `Close session ${session.id} on ${session.server_id}? Its desktop ends: anything not saved in it is lost.`,
      confirm: "Close session",
      danger: true,
      details: [
        ["Session", session.id],
        ["Server", session.server_id],
        ["Type", typeName(session.type)],
      ],
    });
    if (!confirmed || stopped) return;
    buttons.forEach((b) => {
      b.disabled = true;
    });
    try {
      await del(`/v1/user/sessions/${encodeURIComponent(session.id)}${query({ serverId: session.server_id })}`);
      if (stopped) return;
      toast(`Session ${session.id} on ${session.server_id} is closed.`);
      sessionsHeading.focus();
      await refresh();
    } catch (error) {
      if (stopped) return;
      report(explainSession(error, session));
      if (error instanceof ApiError && error.status === 404) refresh();
    } finally {
      buttons.forEach((b) => {
        b.disabled = false;
      });
    }
  }

  function sessionCard(session) {
    const where = `${session.id} on ${session.server_id}`;
    const heading = h("h3", {});
    const info = h("div");
    const message = h("div", { class: "portal-message" });
    const report = (text) => show(message, text ? notice(text) : null);
    const open = h(
      "button",
      {
        type: "button",
        class: "primary",
        "aria-label": `Open in browser: ${where}`,
        onclick: () => openInBrowser(session, open, report),
      },
      "Open in browser",
    );
    // A plain link: the director answers with an attachment, so the page
    // stays and the token goes straight into the file.
    const download = h(
      "a",
      {
        class: "button",
        href: `/v1/user/connectionfile${query({ serverId: session.server_id, sessionId: session.id })}`,
        download: true,
        "aria-label": `Download .dcv: ${where}`,
        onclick: () => report(null),
      },
      "Download .dcv",
    );
    const close = h(
      "button",
      {
        type: "button",
        class: "secondary",
        "aria-label": `Close session: ${where}`,
        onclick: () => closeSession(session, [open, close], report),
      },
      "Close session",
    );
    const element = h(
      "li",
      { class: "card", dataset: { session: session.id, server: session.server_id } },
      heading,
      info,
      h("div", { class: "actions", role: "group", "aria-label": `Connect or close: ${where}` }, open, download, close),
      message,
    );
    return {
      element,
      open,
      update(row) {
        show(heading, `${typeName(row.type)} session on ${row.server_id}`);
        const status = String(row.status || "").toLowerCase();
        show(
          info,
          h(
            "dl",
            { class: "details" },
            h("dt", {}, "Session"),
            h("dd", { class: "mono" }, row.id),
            status
              ? [
                  h("dt", {}, "Status"),
                  h("dd", {}, h("span", { class: `badge ${status === "creating" ? "warn" : "ok"}` }, status)),
                ]
              : null,
            h("dt", {}, "Started"),
            h("dd", {}, formatTime(row["creation-time"])),
            h("dt", {}, "Connections"),
            h("dd", {}, String(row["num-of-connections"] ?? 0)),
          ),
        );
      },
    };
  }

  // ------------------------------------------------------------ refresh

  const updateSessions = keyedList(sessionList, sessionCard);
  const updatePools = keyedList(poolList, poolCard);
  const updateStations = keyedList(stationList, stationCard);

  function render(overview, sessions) {
    const details = overview.details ?? { workstations: [], pools: [] };
    const stations = details.workstations ?? [];
    const pools = details.pools ?? [];
    const allowCustom = (overview.servers ?? []).includes(ALLOW_CUSTOM);

    const ordered = [...sessions].sort(
      (a, b) => a.server_id.localeCompare(b.server_id) || a.id.localeCompare(b.id),
    );
    lastSessions = ordered;
    const sessionItems = updateSessions(ordered, (s) => `${s.server_id}\n${s.id}`);
    sessionsEmpty.hidden = ordered.length > 0;

    const inPool = (id) =>
      stations
        .filter((w) => (w.pools ?? []).includes(id))
        .flatMap((w) => (w.sessions ?? []).map((sessionId) => ({ id: sessionId, server: w.hostname })));
    updatePools(
      pools.map((p) => ({ ...p, mine: inPool(p.id) })),
      (p) => p.id,
    );
    poolsSection.hidden = pools.length === 0;

    updateStations(
      stations.map((w) => ({ ...w, pools: w.pools ?? [], sessions: w.sessions ?? [] })),
      (w) => w.hostname.toLowerCase(),
    );
    customList.hidden = !allowCustom;
    stationsSection.hidden = stations.length === 0 && !allowCustom;
    nothing.hidden = pools.length > 0 || stations.length > 0 || allowCustom;

    if (focusNext) {
      const item = sessionItems.get(focusNext);
      focusNext = null;
      if (item) item.open.focus();
    }
  }

  async function load() {
    try {
      const [overview, sessions] = await Promise.all([get("/v1/user/servers"), get("/v1/user/sessions")]);
      if (stopped) return;
      render(overview, Array.isArray(sessions) ? sessions : []);
      loaded = true;
      loadingText.remove();
      updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
      if (shownError) {
        shownError = "";
        show(problem);
      }
    } catch (error) {
      if (stopped) return;
      const text = loaded ? `Could not refresh: ${error.message}` : error.message;
      loadingText.remove();
      // The same trouble every few seconds is shown, not announced again.
      if (text !== shownError) {
        shownError = text;
        show(problem, notice(text));
      }
    }
  }

  // One load at a time; a call during one runs once more after it.
  async function refresh() {
    if (loading) {
      again = true;
      return loading;
    }
    loading = (async () => {
      do {
        again = false;
        await load();
      } while (again && !stopped);
    })();
    try {
      await loading;
    } finally {
      loading = null;
    }
  }

  await refresh();
  return () => {
    stopped = true;
    refresher.stop();
  };
}
