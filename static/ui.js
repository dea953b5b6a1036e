// DOM helpers. Text a person typed only ever goes in through textContent (`text:`), never as HTML.

const SVG_NS = "http://www.w3.org/2000/svg";

/** el("li", {class: "x", text: "...", attrs: {...}, data: {...}, on: {click}}, ...children) */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  if (props.class) node.className = props.class;
  if (props.text !== undefined) node.textContent = props.text;
  for (const [k, v] of Object.entries(props.attrs || {})) {
    if (v !== undefined && v !== null && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  Object.assign(node.dataset, props.data || {});
  for (const [type, fn] of Object.entries(props.on || {})) node.addEventListener(type, fn);
  node.append(...children.filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

// 24x24 line icons, drawn with currentColor.
const ICONS = {
  tick: ["M4 12.5l5 5L20 6.5"],
  ticks: ["M1.5 12.5l5 5L17 7", "M10 16.5l1 1L22 7"],
  clock: ["M12 3a9 9 0 1 0 0 18a9 9 0 1 0 0-18", "M12 7v5l3.5 2"],
  alert: ["M12 3a9 9 0 1 0 0 18a9 9 0 1 0 0-18", "M12 7.5v6", "M12 16.5v.5"],
  back: ["M15 5l-7 7 7 7"],
  send: ["M4 12L20 4l-5 16-3-7z", "M12 13L20 4"],
  plus: ["M12 5v14", "M5 12h14"],
  group: ["M9 4.5a3.5 3.5 0 1 0 0 7a3.5 3.5 0 1 0 0-7", "M2.5 20c0-3.6 2.9-6 6.5-6s6.5 2.4 6.5 6",
          "M16 5.2a3 3 0 0 1 0 5.6", "M18 14.2c2 .6 3.5 2.6 3.5 5.3"],
  hash: ["M10 4L8 20", "M16 4l-2 16", "M4.5 9h15", "M4 15h15"],
  contacts: ["M12 4a4 4 0 1 0 0 8a4 4 0 1 0 0-8", "M4 21c0-4.4 3.6-7 8-7s8 2.6 8 7"],
  logout: ["M14 4h5v16h-5", "M9.5 8l-4 4 4 4", "M5.5 12H15"],
  info: ["M12 3a9 9 0 1 0 0 18a9 9 0 1 0 0-18", "M12 11v5.5", "M12 7.5v.5"],
  close: ["M6 6l12 12", "M18 6L6 18"],
  lock: ["M6 11h12v9H6z", "M8.5 11V8a3.5 3.5 0 0 1 7 0v3"],
  star: ["M12 3.5l2.6 5.4 5.9.8-4.3 4.1 1 5.8-5.2-2.8-5.2 2.8 1-5.8-4.3-4.1 5.9-.8z"],
  settings: ["M4 7h9", "M17 7h3", "M15 5v4", "M4 17h3", "M11 17h9", "M9 15v4"],
  clip: ["M21.4 11.1l-9.2 9.2a6 6 0 0 1-8.5-8.5l9.2-9.2a4 4 0 0 1 5.7 5.7l-9.2 9.2a2 2 0 0 1-2.8-2.8l8.5-8.5"],
  file: ["M14 3H6.5A1.5 1.5 0 0 0 5 4.5v15A1.5 1.5 0 0 0 6.5 21h11a1.5 1.5 0 0 0 1.5-1.5V8z", "M14 3v5h5"],
  download: ["M12 4v11", "M7 10.5l5 5 5-5", "M5 20h14"],
  bell: ["M6 16.5V11a6 6 0 0 1 12 0v5.5l1.5 2h-15z", "M10 20.5a2 2 0 0 0 4 0"],
  bellOff: ["M6 16.5V11a6 6 0 0 1 12 0v5.5l1.5 2h-15z", "M10 20.5a2 2 0 0 0 4 0", "M3.5 3.5l17 17"],
  shield: ["M12 3l7 3v5c0 4.5-3 8-7 10c-4-2-7-5.5-7-10V6z", "M9 12l2 2 4-4"],
  // Issue 18 (views/refs.js, views/search.js).
  search: ["M10.5 4a6.5 6.5 0 1 0 0 13a6.5 6.5 0 1 0 0-13", "M15.5 15.5L20 20"],
  more: ["M5 12h.01", "M12 12h.01", "M19 12h.01"],
  reply: ["M9.5 7L4.5 12l5 5", "M4.5 12H14a5.5 5.5 0 0 1 5.5 5.5V19"],
  edit: ["M4 20h4L19 9l-4-4L4 16z", "M13.5 6.5l4 4"],
};

/** An inline SVG icon, hidden from screen readers (its button carries the label). */
export function icon(name, cls = "") {
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("class", `icon ${cls}`.trim());
  for (const d of ICONS[name] || []) {
    const path = document.createElementNS(SVG_NS, "path");
    path.setAttribute("d", d);
    svg.append(path);
  }
  return svg;
}

/** Put icons into every element that asks for one with data-icon (the static markup). */
export function hydrateIcons(root = document) {
  for (const node of root.querySelectorAll("[data-icon]")) {
    node.prepend(icon(node.dataset.icon));
    delete node.dataset.icon;
  }
}

/** A well-mixed 32-bit hash (FNV-1a and a finaliser): "…01" and "…02" get far-apart colours. */
export function hash(text) {
  let h = 0x811c9dc5;
  for (const ch of String(text)) h = Math.imul(h ^ ch.codePointAt(0), 0x01000193);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  return h >>> 0;
}

/** Up to two initials of a name (or the last two digits of a phone), letters and digits only:
 *  "Carol (cousin)" -> "CC", "Dr. J. Smith" -> "DJ" (issue 18, defect 8). */
export function initials(title) {
  const words = String(title).replace(/^#/, "").trim().split(/\s+/)
    .map((w) => w.replace(/[^\p{L}\p{N}]/gu, "")).filter(Boolean);
  if (!words.length) return "?";
  if (/^[0-9]+$/.test(words[0])) return words[0].slice(-2);
  const letters = words.slice(0, 2).map((w) => Array.from(w)[0].toUpperCase());
  return letters.join("");
}

/** A round avatar with initials and a colour derived from `seed` (set through the CSSOM). */
export function avatar(title, seed, kind = "personal") {
  const node = el("span", {class: `avatar avatar-${kind}`, attrs: {"aria-hidden": "true"}});
  if (kind === "group") node.append(icon("group"));
  else if (kind === "room") node.append(icon("hash"));
  else node.textContent = initials(title);
  node.style.setProperty("--hue", String(hash(seed) % 360));
  return node;
}

let toastTimer = null;

/**
 * A short message at the bottom of the screen (errors from the server, confirmations). While a
 * modal dialog is open, the page behind it is out of sight: the message goes into that dialog
 * instead (`dialogError`). An empty `text` takes away whatever is shown (a later request
 * succeeded: its old refusal must not stay on screen).
 */
export function toast(text) {
  const node = document.getElementById("toast");
  clearTimeout(toastTimer);
  if (!text) {
    node.hidden = true;
    for (const line of document.querySelectorAll(".dialog-error")) showError(line, "");
    return;
  }
  const dialog = topDialog();
  if (dialog) {
    node.hidden = true;
    dialogError(dialog, text);
    return;
  }
  node.textContent = text;
  node.hidden = false;
  toastTimer = setTimeout(() => { node.hidden = true; }, 5000);
}

/** The modal dialog on top (the one holding the focus, else the last one opened), or null. */
function topDialog() {
  const focused = document.activeElement?.closest?.("dialog[open]");
  if (focused) return focused;
  const open = [...document.querySelectorAll("dialog[open]")].filter((d) => d.matches(":modal"));
  return open.at(-1) || null;
}

/**
 * Show `text` inside `dialog` (issue 18, defect 1): in a `role="alert"` line at the end of the
 * form being used (else above the dialog's buttons), scrolled into view; the fields keep what
 * was typed. The line empties when the dialog closes or a later request succeeds.
 */
export function dialogError(dialog, text) {
  const form = document.activeElement?.closest?.("form");
  const place = form && dialog.contains(form) ? form : dialog.querySelector(".dialog-body") || dialog;
  let line = place.querySelector(":scope > .dialog-error");
  if (!line) {
    line = el("p", {class: "form-error dialog-error", attrs: {role: "alert"}});
    const actions = place.querySelector(":scope > .dialog-actions");
    if (actions) actions.before(line); else place.append(line);
    if (!dialog.dataset.errorsClear) {
      dialog.dataset.errorsClear = "1";
      dialog.addEventListener("close", () => {
        for (const old of dialog.querySelectorAll(".dialog-error")) showError(old, "");
      });
    }
  }
  showError(line, text);
  line.scrollIntoView({block: "nearest"});
}

/**
 * Ask before something that cannot be undone (the #dlg-confirm dialog of chat.html): resolves
 * true when the person chose `ok`, false on Cancel or Escape. Cancel has the focus first.
 */
export function confirmStep({title, text, ok}) {
  const dialog = document.getElementById("dlg-confirm");
  document.getElementById("dlg-confirm-title").textContent = title;
  document.getElementById("dlg-confirm-text").textContent = text;
  document.getElementById("dlg-confirm-ok").textContent = ok;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), {once: true});
    dialog.showModal();
  });
}

/** Show `text` in the error line `node` (role=alert), or hide it when `text` is empty. */
export function showError(node, text) {
  node.textContent = text || "";
  node.hidden = !text;
}
