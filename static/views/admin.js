// The administration dialog (SPEC 10, admins only; the server answers 403 to anyone else): the
// server's numbers, the accounts (disable, make admin, delete) and the invites (create, copy,
// revoke). Names are whatever people typed: they only ever go in as text.

import {admin} from "../actions.js";
import {ME, on, state} from "../state.js";
import {ageLabel, fullLabel, parseTs} from "../time.js";
import {confirmStep, el, showError} from "../ui.js";

const $ = (id) => document.getElementById(id);

/** Bind the admin button (shown to admins only), the invite form and the copy button. */
export function mount() {
  on("account", () => {
    $("show-admin").hidden = !state.admin;
    if (!state.admin && $("dlg-admin").open) $("dlg-admin").close();
  });
  $("show-admin").addEventListener("click", openAdmin);
  $("invite-form").addEventListener("submit", createInvite);
  $("invite-new-copy").addEventListener("click", () => copy($("invite-new-url").value, $("invite-new-url")));
}

async function openAdmin() {
  showError($("admin-error"), "");
  showError($("invite-error"), "");
  $("invite-status").textContent = "";
  $("admin-users-status").textContent = "";
  $("invite-new").hidden = true;
  $("invite-form").reset();
  $("dlg-admin").showModal();
  await Promise.all([loadStats(), loadUsers(), loadInvites()]);
}

/** A request's refusal goes to the dialog's error line; resolves true when it worked. */
function report(r, line = $("admin-error")) {
  showError(line, r.ok ? "" : r.error);
  return r.ok;
}

// -- numbers ---------------------------------------------------------------------------------

const BYTE_UNITS = ["bytes", "KB", "MB", "GB", "TB"];

/** 1536 -> "1.5 KB" (powers of 1024, as `du -h`). */
export function bytesLabel(n) {
  let value = Number(n) || 0;
  let unit = 0;
  while (value >= 1024 && unit < BYTE_UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  const shown = unit === 0 ? String(value) : value.toLocaleString("en", {maximumFractionDigits: 1});
  return `${shown} ${BYTE_UNITS[unit]}`;
}

/** A server time (protocol text, ISO, or seconds/ms/µs since the epoch) -> µs, or NaN. */
function toUs(value) {
  if (typeof value === "number") {
    if (value > 1e14) return value;        // µs
    if (value > 1e11) return value * 1000; // ms
    return value * 1_000_000;              // s
  }
  return parseTs(String(value).replace(/([+-]00:?00|UTC)$/, "").trim());
}

const DATE_TIME = new Intl.DateTimeFormat("en-GB", {day: "numeric", month: "short", year: "numeric",
                                                    hour: "2-digit", minute: "2-digit"});

/** A <time> for a server time, by its age ("14:05", "Tue") or with `exact` its date and time
 *  (creation, expiry: an expiry is in the future); `none` when there is none. */
function when(value, none, exact = false) {
  const us = value === null || value === undefined || value === "" ? NaN : toUs(value);
  if (Number.isNaN(us)) return el("span", {class: "muted", text: value ? String(value) : none});
  const text = exact ? DATE_TIME.format(us / 1000) : ageLabel(us);
  return el("time", {text, data: exact ? {} : {us: String(us)},
                     attrs: {datetime: new Date(us / 1000).toISOString(), title: fullLabel(us)}});
}

async function loadStats() {
  const r = await admin.stats();
  if (!report(r)) return;
  const s = r.data;
  const items = [
    ["Users", s.users], ["Devices logged in", s.devices], ["Open sockets", s.sockets],
    ["Stored messages", s.stored_messages], ["Attachments", bytesLabel(s.attachment_bytes)],
    ["Database", bytesLabel(s.database_bytes)],
  ];
  $("admin-stats").replaceChildren(...items.map(([label, value]) => el("div", {class: "stat"},
    el("dt", {text: label}), el("dd", {text: String(value ?? "—")}))));
}

// -- users -----------------------------------------------------------------------------------

let users = [];

async function loadUsers() {
  const r = await admin.users();
  if (!report(r)) return;
  users = Array.isArray(r.data.users) ? r.data.users : [];
  renderUsers();
}

/** A data cell that says what it is on a phone-sized screen (the table turns into cards). */
function cell(label, ...content) {
  return el("td", {data: {label}}, ...content);
}

function yesNo(flag) {
  return el("span", {class: flag ? "flag on" : "flag", text: flag ? "yes" : "no"});
}

function renderUsers() {
  // Keep the keyboard where it was: the same button of the same row after the re-render.
  const focusKey = document.activeElement?.dataset?.focusKey;
  const rows = users.map((u) => {
    const self = u.phone === ME;
    const who = `${u.name || u.phone} (${u.phone})`;
    const actions = self ? [el("span", {class: "muted", text: "you"})] : [
      el("button", {class: "btn", text: u.disabled ? "Enable" : "Disable",
                    attrs: {type: "button", "aria-label": `${u.disabled ? "Enable" : "Disable"} ${who}`},
                    data: {focusKey: `${u.phone} disabled`},
                    on: {click: () => setUser(u, {disabled: !u.disabled})}}),
      el("button", {class: "btn", text: u.admin ? "Revoke admin" : "Make admin",
                    attrs: {type: "button",
                            "aria-label": `${u.admin ? "Revoke admin rights of" : "Make admin:"} ${who}`},
                    data: {focusKey: `${u.phone} admin`},
                    on: {click: () => setUser(u, {admin: !u.admin})}}),
      el("button", {class: "btn danger", text: "Delete",
                    attrs: {type: "button", "aria-label": `Delete ${who}`},
                    data: {focusKey: `${u.phone} delete`},
                    on: {click: () => deleteUser(u)}}),
    ];
    return el("tr", {class: u.disabled ? "disabled" : "", data: {phone: u.phone}},
      el("th", {attrs: {scope: "row"}, data: {label: "Name"}}, el("span", {class: "cell-name", text: u.name || "—"})),
      cell("Phone", el("span", {text: u.phone})),
      cell("Admin", yesNo(u.admin)),
      cell("Disabled", yesNo(u.disabled)),
      cell("Created", when(u.created, "—", true)),
      cell("Last seen", when(u.last_seen, "never")),
      cell("Devices", el("span", {text: String(u.devices ?? 0)})),
      cell("Waiting", el("span", {text: String(u.waiting ?? 0)})),
      el("td", {class: "row-actions"}, ...actions));
  });
  $("admin-users-body").replaceChildren(...rows);
  if (focusKey) {
    const again = $("admin-users-body").querySelector(`[data-focus-key="${CSS.escape(focusKey)}"]`);
    (again || $("users-title")).focus?.();
  }
}

async function setUser(user, change) {
  const r = await admin.setUser(user.phone, change);
  if (!report(r)) return;
  const what = "disabled" in change
    ? (change.disabled ? "disabled: logged out everywhere" : "enabled")
    : (change.admin ? "now an admin" : "no longer an admin");
  $("admin-users-status").textContent = `${user.name || user.phone} is ${what}.`;
  await Promise.all([loadUsers(), loadStats()]);
}

async function deleteUser(user) {
  const ok = await confirmStep({
    title: `Delete ${user.name || user.phone}?`,
    text: `The account ${user.phone}, its contacts and the messages waiting for it are deleted ` +
          "for good, and its devices are logged out.",
    ok: "Delete account",
  });
  if (!ok) {
    $("admin-users-body").querySelector(`[data-focus-key="${CSS.escape(`${user.phone} delete`)}"]`)?.focus();
    return;
  }
  const r = await admin.deleteUser(user.phone);
  if (!report(r)) return;
  $("admin-users-status").textContent = `${user.name || user.phone} was deleted.`;
  await Promise.all([loadUsers(), loadStats()]);
  $("users-title").focus();
}

// -- invites ---------------------------------------------------------------------------------

async function loadInvites() {
  const r = await admin.invites();
  if (!report(r, $("invite-error"))) return;
  const invites = Array.isArray(r.data.invites) ? r.data.invites : [];
  const items = invites.map((inv) => {
    const left = inv.uses_left ?? inv.uses;
    return el("li", {class: "pick invite", data: {code: inv.code}},
      el("span", {class: "pick-text"},
         el("span", {class: "invite-url", text: inv.url || inv.code}),
         el("span", {class: "muted"},
            el("span", {text: `${left} of ${inv.uses} use${inv.uses === 1 ? "" : "s"} left · expires `}),
            when(inv.expires, "never", true),
            el("span", {text: inv.created_by ? ` · by ${inv.created_by}` : ""}))),
      el("button", {class: "btn", text: "Copy link",
                    attrs: {type: "button", "aria-label": `Copy link of invite ${inv.code}`},
                    on: {click: (ev) => copy(inv.url, ev.currentTarget)}}),
      el("button", {class: "btn danger", text: "Revoke",
                    attrs: {type: "button", "aria-label": `Revoke invite ${inv.code}`},
                    on: {click: () => revokeInvite(inv)}}));
  });
  $("admin-invites").replaceChildren(...items);
  $("admin-invites-empty").hidden = items.length > 0;
}

async function createInvite(ev) {
  ev.preventDefault();
  $("invite-status").textContent = "";
  const uses = Number($("invite-uses").value);
  const days = Number($("invite-days").value);
  const r = await admin.createInvite(uses, days);
  if (!report(r, $("invite-error"))) return;
  $("invite-new-url").value = r.data.url;
  $("invite-new").hidden = false;
  $("invite-status").textContent = "Invite created: send the link to the person it is for.";
  await loadInvites();
  $("invite-new-url").focus();
  $("invite-new-url").select();
}

async function revokeInvite(inv) {
  const r = await admin.revokeInvite(inv.code);
  if (!report(r, $("invite-error"))) return;
  $("invite-status").textContent = "Invite revoked: its link no longer works.";
  if ($("invite-new-url").value === inv.url) $("invite-new").hidden = true;
  await loadInvites();
  $("invites-title").focus();
}

/** Put `text` on the clipboard; where the browser refuses, select it for Ctrl+C instead. */
async function copy(text, from) {
  try {
    await navigator.clipboard.writeText(text);
    $("invite-status").textContent = "Link copied.";
  } catch {
    $("invite-new-url").value = text;
    $("invite-new").hidden = false;
    $("invite-new-url").focus();
    $("invite-new-url").select();
    $("invite-status").textContent = "Copying is not allowed here: the link is selected, press Ctrl+C.";
    return;
  }
  from?.focus?.();
}
