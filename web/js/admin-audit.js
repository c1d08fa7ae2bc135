// Admin: the director's audit trail — who did what, when, from where, and
// with what outcome (GET /v1/admin/audit).
//
// The filters go to the director when the form is submitted, and into the
// address bar (?actor=&action=&since=&until=), so a filtered view can be
// bookmarked or shared; `limit` there sets the page size (default 50). The
// newest lines come first; "Load more" asks for the page after the last
// answer's `next`. "Export CSV" is a plain link to the same query with
// format=csv (up to 100,000 lines, no paging): the browser downloads it with
// its own login cookie. Times show in the reader's local time, the UTC value
// the director wrote in their title.

import { ApiError, get, query } from "./api.js";
import { dataTable, field, formatTime, h, notice, screenHead, show } from "./ui.js";

const API = "/v1/admin/audit";
const PAGE_SIZE = 50;
const CUSTOM = "custom";
// Go durations (the director's): no "d" unit.
const SINCE_CHOICES = [
  ["1h", "Last hour"],
  ["24h", "Last 24 hours"],
  ["168h", "Last 7 days"],
  ["720h", "Last 30 days"],
  ["", "All"],
  [CUSTOM, "Other…"],
];
const OUTCOME_BADGES = { ok: "ok", failed: "bad", refused: "warn" };
const FILTERS = ["actor", "action", "since", "until"];

// The filters (and page size) of the address bar.
function fromAddress() {
  const params = new URLSearchParams(window.location.search);
  const filters = {};
  for (const name of FILTERS) filters[name] = (params.get(name) ?? "").trim();
  return { filters, limit: (params.get("limit") ?? "").trim() };
}

function optional(text, className = null) {
  const value = String(text ?? "");
  return value ? h("span", { class: className }, value) : h("span", { class: "muted" }, "—");
}

function timeCell(entry) {
  const utc = String(entry.time ?? "");
  return h("time", { class: "nowrap", datetime: utc || null, title: utc ? `${utc} (UTC)` : null }, formatTime(utc));
}

function outcomeBadge(outcome) {
  const text = String(outcome ?? "");
  const kind = OUTCOME_BADGES[text];
  return h("span", { class: kind ? `badge ${kind}` : "badge" }, text || "unknown");
}

export async function mount(container) {
  const start = fromAddress();
  let applied = start.filters;
  const pageSize = start.limit || String(PAGE_SIZE);
  let entries = [];
  let next = null;
  let sequence = 0;
  let stopped = false;
  const seenActions = new Set();

  const status = h("p", { class: "muted", role: "status" }, "Loading…");
  const problem = h("div");

  // ------------------------------------------------------------ the form
  const hintId = "audit-times-hint";
  const actor = h("input", { type: "search", name: "actor", autocomplete: "off", spellcheck: "false", maxlength: "256" });
  const actions = h("datalist", { id: "audit-actions" });
  const action = h("input", {
    type: "text",
    name: "action",
    list: "audit-actions",
    autocomplete: "off",
    spellcheck: "false",
    maxlength: "256",
  });
  const since = h(
    "select",
    { name: "since-choice" },
    SINCE_CHOICES.map(([value, label]) => h("option", { value }, label)),
  );
  const sinceText = h("input", {
    type: "text",
    name: "since",
    autocomplete: "off",
    spellcheck: "false",
    maxlength: "256",
    placeholder: "e.g. 2h",
    "aria-describedby": hintId,
  });
  const sinceField = field("Since (time or duration)", sinceText);
  const until = h("input", {
    type: "text",
    name: "until",
    autocomplete: "off",
    spellcheck: "false",
    maxlength: "256",
    placeholder: "e.g. 1h",
    "aria-describedby": hintId,
  });
  const inputs = { actor, action, since: sinceText, until };

  function setSince(value) {
    const preset = SINCE_CHOICES.some(([choice]) => choice === value && choice !== CUSTOM);
    since.value = preset ? value : CUSTOM;
    sinceText.value = preset ? "" : value;
    sinceField.hidden = since.value !== CUSTOM;
  }

  function fill(filters) {
    actor.value = filters.actor;
    action.value = filters.action;
    until.value = filters.until;
    setSince(filters.since);
  }

  function wanted() {
    return {
      actor: actor.value.trim(),
      action: action.value.trim(),
      since: since.value === CUSTOM ? sinceText.value.trim() : since.value,
      until: until.value.trim(),
    };
  }

  since.addEventListener("change", () => {
    sinceField.hidden = since.value !== CUSTOM;
    if (since.value === CUSTOM) sinceText.focus();
  });

  // ------------------------------------------------------------ the table
  const table = dataTable({
    caption: "Audit trail, newest first",
    rowKey: (entry) => String(entry.id),
    initialSort: { key: "time", ascending: false },
    empty: "No audit lines match these filters.",
    columns: [
      { key: "time", label: "Time", value: (e) => Number(e.id) || 0, render: timeCell },
      { key: "actor", label: "Actor", render: (e) => optional(e.actor) },
      { key: "action", label: "Action", render: (e) => optional(e.action, "nowrap") },
      { key: "target", label: "Target", render: (e) => optional(e.target, "mono") },
      { key: "address", label: "From", render: (e) => optional(e.address, "mono address") },
      { key: "outcome", label: "Outcome", render: (e) => outcomeBadge(e.outcome) },
      { key: "detail", label: "Detail", render: (e) => optional(e.detail, "detail") },
    ],
  });
  table.element.hidden = true;

  const more = h("button", { type: "button", class: "secondary", hidden: true, onclick: loadMore }, "Load more");
  const exportLink = h(
    "a",
    { class: "button", download: "dcvix-audit.csv", title: "The lines of these filters as a CSV file (up to 100,000)" },
    "Export CSV",
  );

  function exportHref() {
    return `${API}${query({ ...applied, format: "csv" })}`;
  }

  // The address bar says what is shown (a link to share); no new history
  // entry: Back leaves the screen as it does elsewhere.
  function remember() {
    const limit = start.limit ? { limit: start.limit } : {};
    history.replaceState(null, "", `${window.location.pathname}${query({ ...applied, ...limit })}`);
  }

  // The field a 400 names ("since must be ...") is marked invalid.
  function markInvalid(error) {
    const refused = error instanceof ApiError && error.status === 400 ? error.message : "";
    for (const [name, input] of [...Object.entries(inputs), ["since", since]]) {
      if (refused.startsWith(`${name} `)) input.setAttribute("aria-invalid", "true");
      else input.removeAttribute("aria-invalid");
    }
  }

  function explain(error) {
    if (error instanceof ApiError && error.status === 400) return `These filters cannot be used: ${error.message}`;
    return `Could not load the audit trail: ${error.message}`;
  }

  function learnActions(lines) {
    let added = false;
    for (const line of lines) {
      if (line.action && !seenActions.has(line.action)) {
        seenActions.add(line.action);
        added = true;
      }
    }
    if (added) {
      show(actions, [...seenActions].sort((a, b) => a.localeCompare(b)).map((name) => h("option", { value: name })));
    }
  }

  function render() {
    table.update(entries);
    table.element.hidden = false;
    more.hidden = next === null;
    const count = entries.length === 1 ? "1 line" : `${entries.length} lines`;
    const rest = next === null ? "" : ", more to load";
    status.textContent = `${count} shown${rest} · updated ${new Date().toLocaleTimeString()}`;
  }

  function page(after = null) {
    return get(`${API}${query({ ...applied, limit: pageSize, after })}`);
  }

  // The first page of the applied filters (a new search, a refresh).
  async function load() {
    const mine = ++sequence;
    exportLink.href = exportHref();
    status.textContent = "Loading…";
    try {
      const answer = await page();
      if (stopped || mine !== sequence) return;
      entries = Array.isArray(answer?.entries) ? answer.entries : [];
      next = answer?.next ?? null;
      show(problem);
      markInvalid(null);
      learnActions(entries);
      render();
    } catch (error) {
      if (stopped || mine !== sequence) return;
      entries = [];
      next = null;
      table.element.hidden = true;
      more.hidden = true;
      status.textContent = "";
      markInvalid(error);
      show(problem, notice(explain(error)));
    }
  }

  async function loadMore() {
    if (next === null || more.getAttribute("aria-busy") === "true") return;
    const mine = sequence;
    // Not disabled while busy: a disabled button would lose the keyboard focus.
    more.setAttribute("aria-busy", "true");
    try {
      const answer = await page(next);
      if (stopped || mine !== sequence) return;
      const known = new Set(entries.map((e) => e.id));
      const added = (Array.isArray(answer?.entries) ? answer.entries : []).filter((e) => !known.has(e.id));
      entries = [...entries, ...added];
      next = answer?.next ?? null;
      const focused = document.activeElement === more;
      show(problem);
      learnActions(added);
      render();
      // The button goes with the last page: keep the focus in the table.
      if (more.hidden && focused) table.element.focus();
    } catch (error) {
      if (!stopped && mine === sequence) show(problem, notice(`Could not load more lines: ${error.message}`));
    } finally {
      more.removeAttribute("aria-busy");
    }
  }

  function apply() {
    applied = wanted();
    remember();
    load();
  }

  fill(applied);
  exportLink.href = exportHref();

  container.append(
    h(
      "section",
      { class: "fleet-screen audit-screen", "aria-labelledby": "audit-title" },
      screenHead(
        "audit-title",
        "Audit",
        exportLink,
        h("button", { type: "button", class: "secondary", onclick: load }, "Refresh"),
      ),
      h(
        "form",
        {
          class: "toolbar",
          role: "search",
          "aria-label": "Filter the audit trail",
          onsubmit: (event) => {
            event.preventDefault();
            apply();
          },
        },
        field("Actor contains", actor),
        field("Action", action),
        actions,
        field("Since", since),
        sinceField,
        field("Until (optional)", until),
        h("button", { type: "submit", class: "primary" }, "Show"),
        h(
          "button",
          {
            type: "button",
            class: "secondary",
            onclick: () => {
              fill({ actor: "", action: "", since: "", until: "" });
              apply();
            },
          },
          "Clear filters",
        ),
      ),
      h(
        "p",
        { class: "muted hint", id: hintId },
        "Times are RFC 3339 (2026-12-08T09:00:00Z) or a duration back from now (30m, 24h). " +
          "Actor matches any part of the name, in any case; action matches exactly.",
      ),
      problem,
      status,
      table.element,
      h("div", { class: "more" }, more),
    ),
  );

  await load();
  return () => {
    stopped = true;
  };
}
