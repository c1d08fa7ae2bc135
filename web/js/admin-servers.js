// Admin: every server that reports, online or gone quiet, and pushing an
// allowed DCV setting to one.
//
// Memory shows used (total − free) over total, as a bar and as text. A
// server whose agent cannot run dcv says why (`dcv_error`): shown as a
// warning in its row and counted above the table. Auto-refresh pauses while
// a dialog is open.

import { ApiError, get, post } from "./api.js";
import { autoRefresh, dataTable, field, formDialog, formatBytes, formatTime, h, notice, screenHead, show } from "./ui.js";

const AGENT_BADGES = { registered: "ok", pending: "warn" };

function timeValue(text) {
  const value = Date.parse(text ?? "");
  return Number.isNaN(value) ? 0 : value;
}

function number(value) {
  const parsed = Number(value);
  return Number.isFinite(parsed) ? parsed : 0;
}

// Used memory as a fraction of the total (0 when the total is unknown).
function memoryUsed(server) {
  const total = number(server.total_memory);
  if (total <= 0) return 0;
  const used = total - number(server.free_memory);
  return Math.min(Math.max(used / total, 0), 1);
}

function memoryCell(server) {
  const total = number(server.total_memory);
  if (total <= 0) return h("span", { class: "muted" }, "—");
  const fraction = memoryUsed(server);
  const tenth = Math.round(fraction * 10) * 10;
  const used = total - number(server.free_memory);
  return h(
    "div",
    { class: "memory" },
    h("div", { class: `bar w${tenth}`, "aria-hidden": "true" }, h("span")),
    h("span", {}, `${formatBytes(Math.max(used, 0))} / ${formatBytes(total)} (${Math.round(fraction * 100)} %)`),
  );
}

function chips(values, label) {
  const list = Array.isArray(values) ? values : [];
  if (!list.length) return h("span", { class: "muted" }, "—");
  return h(
    "ul",
    { class: "chips", "aria-label": label },
    list.map((value) => h("li", { class: "chip" }, String(value))),
  );
}

function stateCell(server) {
  return h(
    "div",
    { class: "server-state" },
    h("span", { class: server.online ? "badge ok" : "badge bad" }, server.online ? "online" : "offline"),
    server.dcv_error
      ? h("span", { class: "dcv-error", role: "note" }, h("strong", {}, "DCV error: "), String(server.dcv_error))
      : null,
  );
}

function agentBadge(state) {
  const kind = AGENT_BADGES[state] ?? "bad";
  return h("span", { class: `badge ${kind}` }, state || "unknown");
}

function nowrap(text) {
  return h("span", { class: "nowrap" }, text);
}

function fixed(value) {
  return number(value).toFixed(2);
}

function explain(error) {
  if (!(error instanceof ApiError)) return error.message;
  switch (error.status) {
    case 403:
      return `Refused: ${error.message}. Only the settings in the director's config_allow (by default display/quality) may be pushed.`;
    case 404:
      return `${error.message}: the director does not know this server.`;
    case 409:
      return `${error.message}: the server must be online and its agent registered.`;
    default:
      return error.message;
  }
}

export async function mount(container) {
  let loading = false;
  let dialogs = 0;
  let stopped = false;

  const status = h("p", { class: "muted", role: "status" }, "Loading…");
  const problem = h("div");
  const warnings = h("div");
  const outcome = h("div", { "aria-live": "polite" });

  const table = dataTable({
    caption: "Servers",
    rowKey: (server) => server.hostname,
    initialSort: { key: "hostname", ascending: true },
    empty: "No server has reported yet.",
    columns: [
      { key: "hostname", label: "Hostname", render: (s) => h("strong", {}, s.hostname) },
      { key: "online", label: "State", value: (s) => (s.online ? 0 : 1) + (s.dcv_error ? 0.5 : 0), render: stateCell },
      {
        key: "last-seen",
        label: "Last report",
        value: (s) => timeValue(s["last-seen"]),
        render: (s) => formatTime(s["last-seen"]),
      },
      {
        key: "sessions",
        label: "Sessions",
        value: (s) => (Array.isArray(s.sessions) ? s.sessions.length : 0),
        render: (s) => String(Array.isArray(s.sessions) ? s.sessions.length : 0),
      },
      { key: "cores", label: "Cores", value: (s) => number(s.cores), render: (s) => String(number(s.cores)) },
      { key: "memory", label: "Memory used", value: memoryUsed, render: memoryCell },
      { key: "cpu_usage", label: "CPU", value: (s) => number(s.cpu_usage), render: (s) => nowrap(`${fixed(s.cpu_usage)} %`) },
      {
        key: "load",
        label: "Load (1/5/15)",
        value: (s) => number(s.load1),
        render: (s) => nowrap(`${fixed(s.load1)} / ${fixed(s.load5)} / ${fixed(s.load15)}`),
      },
      { key: "tags", label: "Tags", value: (s) => (s.tags ?? []).join(" "), render: (s) => chips(s.tags, `Tags of ${s.hostname}`) },
      { key: "agent_state", label: "Agent", render: (s) => agentBadge(s.agent_state) },
      { key: "pools", label: "Pools", value: (s) => (s.pools ?? []).join(" "), render: (s) => chips(s.pools, `Pools of ${s.hostname}`) },
      {
        key: "actions",
        label: "Actions",
        sortable: false,
        render: (s) => {
          const ready = s.online && s.agent_state === "registered";
          return h(
            "button",
            {
              type: "button",
              class: "small secondary",
              "aria-label": `Push a DCV setting to ${s.hostname}`,
              title: ready ? null : "Only an online server with a registered agent takes settings.",
              disabled: !ready,
              onclick: () => pushSetting(s.hostname),
            },
            "Push setting",
          );
        },
      },
    ],
  });

  function render(servers) {
    table.update(servers);
    const up = servers.filter((s) => s.online).length;
    const total = servers.length === 1 ? "1 server" : `${servers.length} servers`;
    status.textContent = `${total}, ${up} online · updated ${new Date().toLocaleTimeString()}`;
    const failing = servers.filter((s) => s.dcv_error).map((s) => s.hostname);
    show(
      warnings,
      failing.length
        ? notice(
            `DCV fails on ${failing.join(", ")}: ${failing.length === 1 ? "its" : "their"} sessions cannot be listed or changed until it works again.`,
            "warning",
          )
        : null,
    );
  }

  async function refresh() {
    if (loading || stopped) return;
    loading = true;
    try {
      const answer = await get("/v1/servers");
      if (stopped) return;
      show(problem);
      render(Array.isArray(answer) ? answer : []);
    } catch (error) {
      if (!stopped) show(problem, notice(`Could not load the servers: ${error.message}`));
    } finally {
      loading = false;
    }
  }

  async function pushSetting(hostname) {
    dialogs += 1;
    let data;
    try {
      data = await formDialog({
        title: `Push a DCV setting to ${hostname}`,
        submit: "Push",
        build(form) {
          form.append(
            h(
              "p",
              { class: "muted" },
              "Only settings listed in the director's config_allow are accepted (by default display/quality); others are refused.",
            ),
            field("Section", h("input", { name: "section", required: true, value: "display", autocomplete: "off", spellcheck: "false" })),
            field("Key", h("input", { name: "key", required: true, value: "quality", autocomplete: "off", spellcheck: "false" })),
            field(
              "Value",
              h("input", { name: "value", required: true, maxlength: "256", autocomplete: "off", spellcheck: "false" }),
              "For display/quality: a range such as 80 or 60-90.",
            ),
          );
        },
      });
    } finally {
      dialogs -= 1;
    }
    if (!data) return;
    const entry = {
      section: String(data.get("section")).trim(),
      key: String(data.get("key")).trim(),
      value: String(data.get("value")).trim(),
    };
    const name = `${entry.section}/${entry.key}`;
    try {
      await post(`/v1/servers/${encodeURIComponent(hostname)}/config`, { config: [entry] });
      show(outcome, notice(`${name} = ${entry.value} is set on ${hostname}.`, "info"));
    } catch (error) {
      show(outcome, notice(`${name} was not set on ${hostname}. ${explain(error)}`, "error"));
    }
  }

  const refresher = autoRefresh(() => {
    if (dialogs === 0) refresh();
  });

  container.append(
    h(
      "section",
      { class: "fleet-screen", "aria-labelledby": "servers-title" },
      screenHead(
        "servers-title",
        "Servers",
        h("button", { type: "button", class: "secondary", onclick: refresh }, "Refresh"),
      ),
      h("div", { class: "toolbar" }, refresher.element),
      problem,
      warnings,
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
