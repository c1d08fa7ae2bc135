// The small shared layer every screen uses: elements, tables, dialogs,
// messages and formats. No framework and no HTML from strings: text always goes in
// as text, so nothing the director or an agent reports can become markup.

// An element: h("button", {type: "button", onclick: f}, "Label").
// Attributes starting with "on" are listeners; "class" and "dataset" work;
// false, null and undefined attributes are left out; children may be
// strings, numbers, nodes, or arrays of them.
export function h(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2), value);
    } else if (name === "dataset") {
      Object.assign(node.dataset, value);
    } else if (value === true) {
      node.setAttribute(name, "");
    } else {
      node.setAttribute(name, String(value));
    }
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : String(child));
  }
}

// Replace a container's content.
export function show(container, ...children) {
  container.replaceChildren();
  append(container, children);
}

// ---------------------------------------------------------------- formats

export function formatBytes(bytes) {
  if (!Number.isFinite(bytes) || bytes <= 0) return "0 B";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value < 10 && unit > 0 ? 1 : 0)} ${units[unit]}`;
}

// A time as the reader's locale shows it; "—" for none or Go's zero time.
export function formatTime(value) {
  if (!value || value.startsWith("0001-01-01")) return "—";
  const moment = new Date(value);
  return Number.isNaN(moment.getTime()) ? value : moment.toLocaleString();
}

export function formatDuration(seconds) {
  if (seconds < 60) return `${Math.ceil(seconds)} s`;
  const minutes = Math.ceil(seconds / 60);
  return minutes === 1 ? "1 minute" : `${minutes} minutes`;
}

// ---------------------------------------------------------------- messages

// A short message at the bottom of the screen; kind: "info" or "error".
export function toast(message, kind = "info") {
  const area = document.getElementById("toasts");
  const item = h("div", { class: `toast ${kind}`, role: kind === "error" ? "alert" : null }, message);
  area.append(item);
  setTimeout(() => item.remove(), kind === "error" ? 10000 : 5000);
}

// An inline message in a screen (errors stay until replaced).
export function notice(message, kind = "error") {
  return h("p", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, message);
}

// ---------------------------------------------------------------- dialogs

// A modal confirmation; resolves true when confirmed. The message names what
// the action is about (the agent, the session) so nobody confirms blindly.
export function confirmAction({ title, message, confirm = "Confirm", danger = false, details = [] }) {
  return new Promise((resolve) => {
    const dialog = h(
      "dialog",
      { class: "dialog", "aria-labelledby": "dialog-title" },
      h(
        "form",
        { method: "dialog" },
        h("h2", { id: "dialog-title" }, title),
        h("p", {}, message),
        details.length
          ? h("dl", { class: "details" }, details.map(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]))
          : null,
        h(
          "div",
          { class: "actions" },
          h("button", { value: "cancel", class: "secondary", type: "submit" }, "Cancel"),
          h("button", { value: "confirm", class: danger ? "danger" : "primary", type: "submit" }, confirm),
        ),
      ),
    );
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "confirm");
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
    dialog.querySelector("button.secondary").focus();
  });
}

// A modal form; `build(form)` adds the fields, resolves to FormData or null.
export function formDialog({ title, submit = "Save", build }) {
  return new Promise((resolve) => {
    const form = h("form", { method: "dialog" }, h("h2", { id: "dialog-title" }, title));
    build(form);
    form.append(
      h(
        "div",
        { class: "actions" },
        h("button", { value: "cancel", class: "secondary", type: "submit", formnovalidate: true }, "Cancel"),
        h("button", { value: "ok", class: "primary", type: "submit" }, submit),
      ),
    );
    const dialog = h("dialog", { class: "dialog", "aria-labelledby": "dialog-title" }, form);
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "ok" ? new FormData(form) : null);
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

// A labelled form field.
export function field(label, input, hint = null) {
  const id = input.id || `f-${Math.random().toString(36).slice(2)}`;
  input.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), input, hint ? h("small", {}, hint) : null);
}

// A button that copies `text` to the clipboard.
export function copyButton(text, label = "Copy") {
  return h(
    "button",
    {
      type: "button",
      class: "small secondary",
      "aria-label": `${label}: ${text}`,
      onclick: async () => {
        try {
          await navigator.clipboard.writeText(text);
          toast("Copied.");
        } catch {
          toast("Copying is not allowed here; select the text instead.", "error");
        }
      },
    },
    label,
  );
}

// ---------------------------------------------------------------- tables

// A sortable table. columns: [{key, label, value(row) -> sortable,
// render(row) -> node|string, sortable = true}]. Returns {element, update(rows)}.
// The sort (column and direction) survives updates, so auto-refresh does not
// reorder what the reader is looking at.
export function dataTable({ columns, rowKey, caption, initialSort = null, empty = "Nothing to show." }) {
  let rows = [];
  let sort = initialSort ?? { key: columns[0].key, ascending: true };
  const head = h("thead");
  const body = h("tbody");
  const table = h("table", { class: "data" }, caption ? h("caption", {}, caption) : null, head, body);
  const wrapper = h("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": caption || "table" }, table);

  function valueOf(column, row) {
    return column.value ? column.value(row) : row[column.key];
  }

  function compare(a, b) {
    const column = columns.find((c) => c.key === sort.key);
    if (!column) return 0;
    const left = valueOf(column, a);
    const right = valueOf(column, b);
    let order;
    if (typeof left === "number" && typeof right === "number") order = left - right;
    else order = String(left ?? "").localeCompare(String(right ?? ""), undefined, { numeric: true });
    return sort.ascending ? order : -order;
  }

  function renderHead() {
    const cells = columns.map((column) => {
      if (column.sortable === false) return h("th", { scope: "col" }, column.label);
      const active = sort.key === column.key;
      const state = active ? (sort.ascending ? "ascending" : "descending") : "none";
      return h(
        "th",
        { scope: "col", "aria-sort": state },
        h(
          "button",
          {
            type: "button",
            class: "sort",
            onclick: () => {
              sort = { key: column.key, ascending: active ? !sort.ascending : true };
              render();
            },
          },
          column.label,
          h("span", { class: "sort-mark", "aria-hidden": "true" }, active ? (sort.ascending ? " ▲" : " ▼") : ""),
        ),
      );
    });
    head.replaceChildren(h("tr", {}, cells));
  }

  function render() {
    renderHead();
    const sorted = [...rows].sort(compare);
    if (!sorted.length) {
      body.replaceChildren(h("tr", {}, h("td", { colspan: columns.length, class: "empty" }, empty)));
      return;
    }
    body.replaceChildren(
      ...sorted.map((row) =>
        h(
          "tr",
          { dataset: rowKey ? { key: rowKey(row) } : {} },
          columns.map((column) =>
            h("td", { "data-label": column.label }, column.render ? column.render(row) : String(valueOf(column, row) ?? "")),
          ),
        ),
      ),
    );
  }

  render();
  return {
    element: wrapper,
    update(next) {
      rows = next;
      render();
    },
  };
}

// ---------------------------------------------------------------- refresh

const REFRESH_KEY = "dcvix.refresh";
export const REFRESH_CHOICES = [
  [5, "5 s"],
  [10, "10 s"],
  [30, "30 s"],
  [60, "1 min"],
  [0, "Off"],
];

// An auto-refresh select (remembered in localStorage) that calls `tick`
// every chosen interval. Returns {element, stop()}.
export function autoRefresh(tick) {
  let timer = null;
  const stored = Number(localStorage.getItem(REFRESH_KEY) ?? "10");
  const initial = REFRESH_CHOICES.some(([value]) => value === stored) ? stored : 10;
  const select = h(
    "select",
    {
      onchange: () => {
        localStorage.setItem(REFRESH_KEY, select.value);
        schedule(Number(select.value));
      },
    },
    REFRESH_CHOICES.map(([value, label]) => h("option", { value, selected: value === initial }, label)),
  );
  function schedule(seconds) {
    clearInterval(timer);
    timer = seconds > 0 ? setInterval(tick, seconds * 1000) : null;
  }
  schedule(initial);
  return {
    element: field("Auto-refresh", select),
    stop() {
      clearInterval(timer);
    },
  };
}

// A screen's title with its actions beside it (Refresh, Create ...).
export function screenHead(id, title, ...actions) {
  return h("div", { class: "screen-head" }, h("h1", { id }, title), h("div", { class: "screen-actions" }, actions));
}
