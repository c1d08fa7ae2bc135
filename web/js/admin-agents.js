// The Agents screen: the director's agent registry and the admin actions.
//
// One GET /v1/admin/agents lists every agent; the state filter and the
// counts are worked out here, so switching the filter costs no request.
// Every action asks for a confirmation naming the agent (hostname and GUID)
// and then lists the registry again. An approval that meets a registered
// agent holding the same hostname (409) is explained and may be retried
// with "replace", which revokes that other agent. The director's CA
// fingerprint is shown for out-of-band checks.

import { ApiError, get, post, query } from "./api.js";
import { confirmAction, copyButton, dataTable, formatTime, h, notice, show, toast } from "./ui.js";

const FILTERS = [
  ["all", "All"],
  ["pending", "Pending"],
  ["registered", "Registered"],
  ["revoked", "Revoked"],
  ["denied", "Denied"],
];
const CAPTIONS = {
  all: "Agents in every state",
  pending: "Agents waiting for approval",
  registered: "Registered agents",
  revoked: "Revoked agents",
  denied: "Denied agents",
};
const BADGE = { registered: "ok", pending: "warn", revoked: "bad", denied: "bad" };
// Pending first: what needs an admin comes to the top; the director's order
// (oldest first) stays within a state because sorting is stable.
const RANK = { pending: 0, registered: 1, revoked: 2, denied: 3 };
const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/gi;

// The filter survives moving between screens while the app runs.
let remembered = "all";

function name(agent) {
  return `${agent.hostname} (${agent.guid})`;
}

function short(fingerprint) {
  return fingerprint.length > 16 ? `${fingerprint.slice(0, 16)}…` : fingerprint;
}

function path(agent, action, params = {}) {
  return `/v1/admin/agents/${encodeURIComponent(agent.guid)}/${action}${query(params)}`;
}

// What the admin saw when approving: the director refuses (409) if the
// pending agent has since asked for another hostname or key.
function seen(agent) {
  return { hostname: agent.hostname, fingerprint: agent.key_fingerprint };
}

// A fingerprint shortened on screen, whole in its title and its copy button.
function fingerprint(value, what) {
  return h(
    "span",
    { class: "cell" },
    h("span", { class: "mono fingerprint", title: value }, short(value)),
    copy(value, what),
  );
}

// A GUID that may wrap after its hyphens, never inside a group.
function guidText(guid) {
  const parts = guid.split("-");
  return parts.map((part, index) => (index < parts.length - 1 ? [`${part}-`, h("wbr")] : part));
}

// A time as formatTime says it, on two lines (date, time) to keep columns narrow.
function when(value) {
  const text = formatTime(value);
  const moment = new Date(value);
  if (text === "—" || Number.isNaN(moment.getTime())) return text;
  return h(
    "time",
    { datetime: value, title: text, class: "when" },
    h("span", {}, moment.toLocaleDateString()),
    " ",
    h("span", {}, moment.toLocaleTimeString()),
  );
}

// A copy button whose accessible name says what it copies.
function copy(text, what) {
  const button = copyButton(text, "Copy");
  button.setAttribute("aria-label", `Copy ${what}`);
  return button;
}

function expired(value) {
  return Boolean(value) && new Date(value).getTime() < Date.now();
}

// What an agent's details look like in a confirmation.
function details(agent, extra = []) {
  return [
    ["Hostname", agent.hostname],
    ["GUID", agent.guid],
    ["State", agent.state],
    ["Address", agent.address || "—"],
    ["Key (SHA-256)", agent.key_fingerprint || "not pinned"],
    ...extra,
  ];
}

// The confirmation of each action: what happens, in plain words.
const CONFIRM = {
  approve: (agent) => ({
    title: "Approve this agent?",
    message:
      `Approve ${name(agent)}? It gets its certificate the next time it contacts the director ` +
      "and then serves sessions. Approve only an agent you expect, and check its key fingerprint.",
    confirm: "Approve",
    details: details(agent),
  }),
  deny: (agent) => ({
    title: "Deny this agent?",
    message:
      `Deny ${name(agent)}? Its registrations are refused from now on; ` +
      "Reactivate makes it pending again.",
    confirm: "Deny",
    danger: true,
    details: details(agent),
  }),
  revoke: (agent) => ({
    title: "Revoke this agent?",
    message:
      `Revoke ${name(agent)}? The director stops calling it at once, its sessions leave the ` +
      "listings and its certificate is refused. Reactivate restores it with the same key.",
    confirm: "Revoke",
    danger: true,
    details: details(agent),
  }),
  reactivate: (agent) => ({
    title: "Reactivate this agent?",
    message:
      agent.state === "revoked"
        ? `Reactivate ${name(agent)}? It is registered again, with the key it had.`
        : `Reactivate ${name(agent)}? It becomes pending again and waits for approval.`,
    confirm: "Reactivate",
    details: details(agent),
  }),
  delete: (agent) => ({
    title: "Delete this agent?",
    message:
      `Delete ${name(agent)} from the registry? The director forgets it; ` +
      "if it still runs, it comes back as a new pending agent.",
    confirm: "Delete",
    danger: true,
    details: details(agent),
  }),
  claim: (agent) => ({
    title: "Approve the claimed key?",
    message:
      `${name(agent)} was adopted without a known key and now presents the key below. ` +
      "Approve only if this is the fingerprint of the key on that machine: it becomes " +
      "the agent's pinned key and any other key is refused.",
    confirm: "Approve claim",
    details: details(agent, [
      ["Claimed key", agent.claimed_key],
      ["Claimed", formatTime(agent.claimed_at)],
    ]),
  }),
};

const LABELS = {
  approve: "Approve",
  deny: "Deny",
  revoke: "Revoke",
  reactivate: "Reactivate",
  delete: "Delete",
  claim: "Approve claim",
};
const PAST = {
  approve: "approved",
  deny: "denied",
  revoke: "revoked",
  reactivate: "reactivated",
  delete: "deleted",
  claim: "now pinned to its claimed key",
};
const STYLE = {
  approve: "primary",
  claim: "primary",
  revoke: "danger",
  delete: "danger",
};

function actionsOf(agent) {
  switch (agent.state) {
    case "pending":
      return ["approve", "deny"];
    case "registered":
      return agent.claimed_key ? ["claim", "revoke"] : ["revoke"];
    case "revoked":
    case "denied":
      return ["reactivate", "delete"];
    default:
      return [];
  }
}

function warningsOf(agent) {
  const items = [];
  if (agent.duplicate_hostname) {
    items.push(
      h(
        "li",
        {},
        h("span", { class: "badge warn" }, "Duplicate hostname"),
        " ",
        h(
          "small",
          { class: "muted" },
          agent.state === "pending"
            ? "another agent has this hostname"
            : "another registered agent has this hostname",
        ),
      ),
    );
  }
  if (agent.director_host) {
    items.push(
      h(
        "li",
        {},
        h("span", { class: "badge warn" }, "Director's host"),
        " ",
        h("small", { class: "muted" }, "runs on the director's own machine"),
      ),
    );
  }
  if (agent.claimed_key) {
    items.push(
      h(
        "li",
        { class: "claim" },
        h("span", { class: "badge warn" }, "Key claimed"),
        fingerprint(agent.claimed_key, `the claimed key of ${agent.hostname}`),
        agent.claimed_at ? h("small", { class: "muted" }, formatTime(agent.claimed_at)) : null,
      ),
    );
  }
  return items;
}

export async function mount(container) {
  let filter = remembered;
  let agents = [];
  let stopped = false;
  let sequence = 0;
  let busy = false;

  const messages = h("div", { class: "messages agent-messages" });
  const loadError = h("div", { class: "messages load-messages" });
  const updated = h("span", { class: "muted updated" });
  const hint = h(
    "p",
    { class: "muted", hidden: true },
    "No agent has contacted the director yet. Start dcvix-agent on a workstation: it appears here as pending.",
  );
  const caValue = h("span", { class: "mono" }, "…");
  const caCopy = h("span");
  const counts = {};

  const refresh = h(
    "button",
    { type: "button", class: "secondary", onclick: () => load() },
    "Refresh",
  );

  const radios = FILTERS.map(([value, label]) => {
    counts[value] = h("span", { class: "count" }, "0");
    return h(
      "label",
      {},
      h("input", {
        type: "radio",
        name: "agent-state",
        value,
        checked: value === filter,
        onchange: () => {
          filter = value;
          remembered = value;
          render();
        },
      }),
      h("span", {}, label),
      " ",
      counts[value],
    );
  });

  const columns = [
    {
      key: "guid",
      label: "GUID",
      render: (agent) =>
        h("span", { class: "cell" }, h("span", { class: "mono guid" }, guidText(agent.guid)), copy(agent.guid, `the GUID of ${agent.hostname}`)),
    },
    { key: "hostname", label: "Hostname" },
    {
      key: "state",
      label: "State",
      value: (agent) => RANK[agent.state] ?? 9,
      render: (agent) =>
        h(
          "span",
          {
            class: `badge ${BADGE[agent.state] ?? ""}`,
            title: agent.state_changed_at ? `since ${formatTime(agent.state_changed_at)}` : null,
          },
          agent.state,
        ),
    },
    { key: "created_at", label: "Created", render: (agent) => when(agent.created_at) },
    { key: "registered_at", label: "Registered", render: (agent) => when(agent.registered_at) },
    { key: "last_seen_at", label: "Last seen", render: (agent) => when(agent.last_seen_at) },
    {
      key: "address",
      label: "Address",
      render: (agent) => (agent.address ? h("span", { class: "mono address" }, agent.address) : "—"),
    },
    {
      key: "key_fingerprint",
      label: "Key",
      render: (agent) =>
        agent.key_fingerprint
          ? fingerprint(agent.key_fingerprint, `the key fingerprint of ${agent.hostname}`)
          : h("span", { class: "muted" }, "not pinned"),
    },
    {
      key: "cert_expires_at",
      label: "Certificate expires",
      render: (agent) =>
        h(
          "span",
          { class: "cell" },
          when(agent.cert_expires_at),
          expired(agent.cert_expires_at) ? h("span", { class: "badge bad" }, "expired") : null,
        ),
    },
    {
      key: "warnings",
      label: "Warnings",
      value: (agent) => warningsOf(agent).length,
      render: (agent) => {
        const items = warningsOf(agent);
        return items.length ? h("ul", { class: "warnings" }, items) : "";
      },
    },
    {
      key: "actions",
      label: "Actions",
      sortable: false,
      render: (agent) =>
        h(
          "span",
          { class: "row-actions" },
          actionsOf(agent).map((action) =>
            h(
              "button",
              {
                type: "button",
                class: `small ${STYLE[action] ?? "secondary"}`,
                "aria-label": `${LABELS[action]} ${agent.hostname} ${agent.guid}`,
                onclick: () => run(agent, action),
              },
              LABELS[action],
            ),
          ),
        ),
    },
  ];

  const table = dataTable({
    columns,
    rowKey: (agent) => agent.guid,
    caption: CAPTIONS[filter],
    initialSort: { key: "state", ascending: true },
    empty: "No agents in this view.",
  });
  table.element.hidden = true;
  const loading = h("p", { class: "loading" }, "Loading agents…");

  container.append(
    h(
      "div",
      { class: "agents" },
      h("h1", {}, "Agents"),
      h(
        "section",
        { class: "agents-ca", "aria-labelledby": "agents-ca-title" },
        h("h2", { id: "agents-ca-title" }, "Director CA fingerprint (SHA-256)"),
        h("span", { class: "cell" }, caValue, caCopy),
        h(
          "small",
          {},
          "Compare it with the one the director logs at start, or give it to an agent as ca_fingerprint, " +
            "before trusting this director.",
        ),
      ),
      h(
        "div",
        { class: "toolbar" },
        h("fieldset", { class: "states" }, h("legend", {}, "Show agents"), radios),
        h("div", { class: "refresh" }, refresh, updated),
      ),
      loadError,
      messages,
      hint,
      loading,
      table.element,
    ),
  );

  function render() {
    for (const [value] of FILTERS) {
      const count = value === "all" ? agents.length : agents.filter((a) => a.state === value).length;
      counts[value].textContent = String(count);
    }
    const caption = table.element.querySelector("caption");
    if (caption) caption.textContent = CAPTIONS[filter];
    table.element.setAttribute("aria-label", CAPTIONS[filter]);
    table.update(filter === "all" ? agents : agents.filter((a) => a.state === filter));
  }

  async function loadCa() {
    try {
      const ca = await get("/v1/admin/ca");
      if (stopped) return;
      caValue.textContent = ca.fingerprint;
      show(caCopy, copy(ca.fingerprint, "the CA fingerprint"));
    } catch (error) {
      if (stopped) return;
      caValue.textContent = "unknown";
      show(caCopy, h("span", { class: "muted" }, `(${error.message})`));
    }
  }

  // List the registry again; then put the focus back on `focus` (a GUID)
  // when an action of that row moved it away.
  async function load(focus = null) {
    const mine = ++sequence;
    // Not disabled while busy: a disabled button would lose the keyboard focus.
    refresh.setAttribute("aria-busy", "true");
    updated.textContent = "Updating…";
    try {
      const listed = await get("/v1/admin/agents");
      if (stopped || mine !== sequence) return;
      agents = Array.isArray(listed) ? listed : [];
      show(loadError);
      loading.remove();
      table.element.hidden = false;
      hint.hidden = agents.length > 0;
      updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
      render();
    } catch (error) {
      if (stopped || mine !== sequence) return;
      loading.remove();
      updated.textContent = "";
      show(loadError, notice(`Cannot list the agents: ${error.message}`));
    } finally {
      if (!stopped && mine === sequence) refresh.removeAttribute("aria-busy");
    }
    if (focus && !stopped) restoreFocus(focus);
  }

  function restoreFocus(guid) {
    const row = table.element.querySelector(`tr[data-key="${CSS.escape(guid)}"]`);
    const target = row?.querySelector(".row-actions button") ?? table.element;
    target.focus();
  }

  function report(agent, action, answer) {
    const lines = [];
    if (answer?.warning) lines.push(notice(answer.warning, "warning"));
    const replaced = answer?.replaced ?? [];
    if (replaced.length) {
      const names = replaced.map((guid) => {
        const old = agents.find((a) => a.guid === guid);
        return old ? name(old) : guid;
      });
      lines.push(notice(`Revoked in its place: ${names.join(", ")}.`, "info"));
    }
    show(messages, lines);
    toast(`${name(agent)} ${PAST[action]}.`);
  }

  function fail(agent, action, error) {
    const message = error instanceof ApiError ? error.message : String(error);
    show(messages, notice(`${LABELS[action]} ${name(agent)} failed: ${message}`));
  }

  // 409 on approve because a registered agent holds the hostname: say so,
  // and offer to approve with replace (which revokes that agent).
  async function offerReplace(agent, error) {
    const holders = (error.message.match(UUID) ?? []).filter((guid) => guid !== agent.guid);
    const names = holders.map((guid) => {
      const holder = agents.find((a) => a.guid === guid);
      return holder ? name(holder) : guid;
    });
    const holding = names.length ? names.join(", ") : "another agent";
    const explanation =
      `${agent.hostname} is already registered to ${holding}. ` +
      (holders.length > 1
        ? "Replace revokes those agents — the director stops calling them and refuses their certificates — "
        : "Replace revokes that agent — the director stops calling it and refuses its certificate — ") +
      `and approves ${name(agent)} in its place.`;
    show(messages, notice(`Not approved yet: ${explanation}`, "warning"));
    const confirmed = await confirmAction({
      title: "Replace the registered agent?",
      message: explanation,
      confirm: "Replace",
      danger: true,
      details: [
        ["Director says", error.message],
        ["Will be revoked", holding],
        ["Will be approved", name(agent)],
      ],
    });
    if (!confirmed || stopped) {
      if (!stopped) {
        show(
          messages,
          notice(
            `${name(agent)} is still pending: ${agent.hostname} is registered to ${holding}. ` +
              "Approve again and choose Replace, or revoke or delete the other agent first.",
            "warning",
          ),
        );
      }
      return;
    }
    try {
      const answer = await post(
        path(agent, "approve", { replace: "true", replaces: holders.join(","), ...seen(agent) }),
      );
      if (stopped) return;
      report(agent, "approve", answer);
    } catch (failure) {
      if (!stopped) fail(agent, "approve", failure);
    }
  }

  async function run(agent, action) {
    if (busy) return;
    busy = true;
    try {
      const confirmed = await confirmAction(CONFIRM[action](agent));
      if (!confirmed || stopped) return;
      show(messages);
      for (const button of table.element.querySelectorAll(".row-actions button")) button.disabled = true;
      const target =
        action === "claim"
          ? path(agent, "approve", { key: agent.claimed_key })
          : action === "approve"
            ? path(agent, "approve", seen(agent))
            : path(agent, action);
      try {
        const answer = await post(target);
        if (stopped) return;
        report(agent, action, answer);
      } catch (error) {
        if (stopped) return;
        if (
          action === "approve" &&
          error instanceof ApiError &&
          error.status === 409 &&
          /already registered to agent/i.test(error.message)
        ) {
          await offerReplace(agent, error);
        } else {
          fail(agent, action, error);
        }
      }
      if (!stopped) await load(agent.guid);
    } finally {
      busy = false;
    }
  }

  await Promise.all([loadCa(), load()]);
  return () => {
    stopped = true;
  };
}
