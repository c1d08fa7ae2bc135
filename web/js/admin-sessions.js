// Admin: every session of every online server (the Go dashboard's table).
//
// Filters (server, owner, minimum connections) and the sort apply to the
// last list fetched, so typing never waits for the director. A session just
// created shows at once as "creating" (the director lists it before the
// agent's next report). Auto-refresh pauses while a dialog is open, so the
// table does not change under a confirmation.

import { del, get, post, query } from "./api.js";
import { autoRefresh, confirmAction, dataTable, field, formDialog, formatTime, h, notice, screenHead, show } from "./ui.js";

const STATUS_BADGES = { ready: "ok", creating: "warn", closing: "warn" };

function timeValue(text) {
  const value = Date.parse(text ?? "");
  return Number.isNaN(value) ? 0 : value;
}

function statusBadge(status) {
  if (!status) return h("span", { class: "muted" }, "—");
  const kind = STATUS_BADGES[String(status ?? "").toLowerCase()];
  return h("span", { class: kind ? `badge ${kind}` : "badge" }, status);
}

function connections(session) {
  const count = Number(session["num-of-connections"]);
  return Number.isFinite(count) ? count : 0;
}

export async function mount(container) {
  let sessions = [];
  let loading = false;
  let dialogs = 0;
  let stopped = false;

  const status = h("p", { class: "muted", role: "status" }, "Loading…");
  const problem = h("div");
  const outcome = h("div", { "aria-live": "polite" });

  const serverFilter = h("input", { type: "search", name: "server", autocomplete: "off", spellcheck: "false" });
  const ownerFilter = h("input", { type: "search", name: "owner", autocomplete: "off", spellcheck: "false" });
  const minimum = h("input", { type: "number", name: "min-connections", min: "0", step: "1", inputmode: "numeric", class: "narrow" });
  for (const input of [serverFilter, ownerFilter, minimum]) input.addEventListener("input", render);

  const table = dataTable({
    caption: "Sessions",
    rowKey: (session) => session.uid,
    initialSort: { key: "owner", ascending: true },
    empty: "No sessions.",
    columns: [
      { key: "id", label: "ID", render: (s) => h("span", { class: "mono" }, s.id) },
      { key: "owner", label: "Owner" },
      {
        key: "last-seen",
        label: "Last update",
        value: (s) => timeValue(s["last-seen"]),
        render: (s) => h("span", { class: "nowrap" }, formatTime(s["last-seen"])),
      },
      {
        key: "creation-time",
        label: "Creation time",
        value: (s) => timeValue(s["creation-time"]),
        render: (s) => h("span", { class: "nowrap" }, formatTime(s["creation-time"])),
      },
      { key: "status", label: "Status", render: (s) => statusBadge(s.status) },
      { key: "type", label: "Type" },
      { key: "num-of-connections", label: "Connections", value: connections, render: (s) => String(connections(s)) },
      { key: "server_id", label: "Server" },
      {
        key: "actions",
        label: "Actions",
        sortable: false,
        render: (s) =>
          h(
            "button",
            {
              type: "button",
              class: "small danger",
              "aria-label": `Close session ${s.id} on ${s.server_id}`,
              onclick: () => closeSession(s),
            },
            "Close",
          ),
      },
    ],
  });

  function filtered() {
    const server = serverFilter.value.trim().toLowerCase();
    const owner = ownerFilter.value.trim().toLowerCase();
    const least = minimum.value === "" ? null : Number(minimum.value);
    return sessions.filter(
      (s) =>
        String(s.server_id ?? "").toLowerCase().includes(server) &&
        String(s.owner ?? "").toLowerCase().includes(owner) &&
        (least === null || !Number.isFinite(least) || connections(s) >= least),
    );
  }

  function render() {
    const shown = filtered();
    table.update(shown);
    const total = sessions.length === 1 ? "1 session" : `${sessions.length} sessions`;
    const part = shown.length === sessions.length ? "" : ` (${shown.length} shown)`;
    status.textContent = `${total}${part} · updated ${new Date().toLocaleTimeString()}`;
  }

  async function refresh() {
    if (loading || stopped) return;
    loading = true;
    try {
      const answer = await get("/v1/sessions");
      if (stopped) return;
      sessions = Array.isArray(answer) ? answer : [];
      show(problem);
      render();
    } catch (error) {
      if (!stopped) show(problem, notice(`Could not load the sessions: ${error.message}`));
    } finally {
      loading = false;
    }
  }

  // Runs `work` with auto-refresh paused (a dialog is open).
  async function withDialog(work) {
    dialogs += 1;
    try {
      return await work();
    } finally {
      dialogs -= 1;
    }
  }

  function report(message, kind) {
    show(outcome, notice(message, kind));
  }

  async function closeSession(session) {
    const confirmed = await withDialog(() =>
      confirmAction({
        title: "Close this session?",
        message: `Session ${session.id} of ${session.owner} on ${session.server_id} will be closed; anyone connected to it is disconnected.`,
        confirm: "Close session",
        danger: true,
        details: [
          ["Session", session.id],
          ["Server", session.server_id],
          ["Owner", session.owner],
        ],
      }),
    );
    if (!confirmed) return;
    try {
      await del(`/v1/sessions/${encodeURIComponent(session.id)}${query({ serverId: session.server_id })}`);
      report(`Session ${session.id} of ${session.owner} on ${session.server_id} is closed.`, "info");
    } catch (error) {
      report(`Session ${session.id} was not closed: ${error.message}`, "error");
    }
    await refresh();
  }

  async function createSession() {
    let servers;
    try {
      servers = await get("/v1/servers");
    } catch (error) {
      report(`Could not list the servers: ${error.message}`, "error");
      return;
    }
    const online = (Array.isArray(servers) ? servers : [])
      .filter((s) => s.online && (s.agent_state ?? "registered") === "registered")
      .map((s) => s.hostname)
      .sort((a, b) => a.localeCompare(b));
    if (!online.length) {
      report("No server is online: a session needs a registered agent that reports.", "error");
      return;
    }
    const data = await withDialog(() =>
      formDialog({
        title: "Create a session",
        submit: "Create",
        build(form) {
          form.append(
            field(
              "User ID",
              h("input", { name: "userId", required: true, autocomplete: "off", autocapitalize: "none", spellcheck: "false" }),
              "The session's owner.",
            ),
            field(
              "Server",
              h(
                "select",
                { name: "serverId", required: true },
                online.length > 1 ? h("option", { value: "" }, "Choose a server") : null,
                online.map((name) => h("option", { value: name }, name)),
              ),
              "Only online servers are listed.",
            ),
            field(
              "Session type",
              h(
                "select",
                { name: "sessionType" },
                h("option", { value: "console" }, "console"),
                h("option", { value: "virtual" }, "virtual"),
              ),
              "A server has one console session at most; a virtual session needs the user's local account on the server.",
            ),
            field(
              "Session ID (optional)",
              h("input", {
                name: "sessionId",
                autocomplete: "off",
                spellcheck: "false",
                maxlength: "256",
                pattern: "[A-Za-z0-9_.@:+=][A-Za-z0-9_.@:+=\\-]*",
              }),
              "Letters, digits and _ . @ : + = - (not first). Empty: the director picks one.",
            ),
          );
        },
      }),
    );
    if (!data) return;
    const body = {
      userId: String(data.get("userId")).trim(),
      serverId: String(data.get("serverId")),
      sessionType: String(data.get("sessionType")),
    };
    const wanted = String(data.get("sessionId") ?? "").trim();
    if (wanted) body.sessionId = wanted;
    try {
      const answer = await post("/v1/sessions", body);
      report(`Session ${answer.sessionID} for ${body.userId} is starting on ${answer.serverId}.`, "info");
    } catch (error) {
      report(`No session was created for ${body.userId} on ${body.serverId}: ${error.message}`, "error");
    }
    await refresh();
  }

  const refresher = autoRefresh(() => {
    if (dialogs === 0) refresh();
  });

  container.append(
    h(
      "section",
      { class: "fleet-screen", "aria-labelledby": "sessions-title" },
      screenHead(
        "sessions-title",
        "Sessions",
        h("button", { type: "button", class: "primary", onclick: createSession }, "Create session"),
        h("button", { type: "button", class: "secondary", onclick: refresh }, "Refresh"),
      ),
      h(
        "form",
        {
          class: "toolbar",
          role: "search",
          "aria-label": "Filter sessions",
          onsubmit: (event) => event.preventDefault(),
        },
        field("Server contains", serverFilter),
        field("Owner contains", ownerFilter),
        field("Min. connections", minimum),
        h(
          "button",
          {
            type: "button",
            class: "secondary",
            onclick: () => {
              serverFilter.value = "";
              ownerFilter.value = "";
              minimum.value = "";
              render();
            },
          },
          "Clear filters",
        ),
        refresher.element,
      ),
      problem,
      outcome,
      status,
      table.element,
    ),
  );

  await refresh();
  return () => {
    stopped = true;
    refresher.stop();
  };
}
