// This device and the others (SPEC 7): the "Devices" section of the profile dialog (each login's
// label, when it was last active, "This device", logging one out), and logging out here, where
// the person chooses whether this browser keeps the history (docs/client.md, "Logging out").

import {devices, logOut, removeDevice} from "../actions.js";
import {ME} from "../state.js";
import {ageLabel, fullLabel, parseTs} from "../time.js";
import {el, showError} from "../ui.js";

const $ = (id) => document.getElementById(id);
// Set by the login and registration forms when the person ticks "shared or public computer"
// (static/login.js); removed with the history.
const SHARED_KEY = () => `chat.shared.${ME}`;

/** Bind the logout button (which asks first) and its dialog. */
export function mount() {
  $("logout-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    askLogout();
  });
  $("logout-choice").addEventListener("submit", confirmLogout);
  $("logout-cancel").addEventListener("click", () => $("dlg-logout").close());
  $("dlg-logout").addEventListener("close", () => {
    // A failed logout stopped the sockets (and may have deleted the history): start again.
    if ($("dlg-logout").dataset.tried) location.reload();
  });
}

// -- the list -------------------------------------------------------------------------------

/** Read the devices from the server and show them (the profile dialog opens). */
export async function renderDevices() {
  const list = $("device-list");
  showError($("devices-error"), "");
  $("devices-status").textContent = "Loading your devices…";
  list.setAttribute("aria-busy", "true");
  const r = await devices();
  list.setAttribute("aria-busy", "false");
  $("devices-status").textContent = "";
  if (!r.ok) {
    list.replaceChildren();
    showError($("devices-error"), `Your devices could not be listed: ${r.error}`);
    return;
  }
  const items = Array.isArray(r.data.devices) ? r.data.devices : [];
  list.replaceChildren(...items.map(deviceRow));
}

function when(ts, prefix) {
  const us = parseTs(ts);
  if (Number.isNaN(us)) return null;
  return el("time", {text: `${prefix} ${ageLabel(us)}`,
                     attrs: {datetime: new Date(us / 1000).toISOString(), title: fullLabel(us)}});
}

function deviceRow(device) {
  const label = typeof device.label === "string" && device.label ? device.label : "Unknown device";
  const about = el("span", {class: "muted device-about"});
  if (device.current) about.append(el("strong", {class: "this-device", text: "This device"}), " · ");
  const active = when(device.last_active, "last active");
  if (active) about.append(active);
  const button = device.current
    ? el("button", {class: "btn", text: "Log out", attrs: {type: "button"},
                    on: {click: () => { $("dlg-profile").close(); askLogout(); }}})
    : el("button", {class: "btn danger", text: "Log out this device",
                    attrs: {type: "button", "aria-label": `Log out this device: ${label}`}});
  const row = el("li", {class: `pick device${device.current ? " current" : ""}`,
                        data: {id: String(device.id)}},
                 el("span", {class: "pick-text"}, el("span", {class: "device-label", text: label}), about),
                 button);
  if (!device.current) button.addEventListener("click", () => endDevice(device, label, row, button));
  return row;
}

async function endDevice(device, label, row, button) {
  showError($("devices-error"), "");
  $("devices-status").textContent = "";
  button.disabled = true;
  const r = await removeDevice(String(device.id));
  button.disabled = false;
  if (r.ok || r.status === 404) {
    // Gone either way (a 404: it had ended already, or is no longer mine): the list follows.
    const next = row.nextElementSibling || row.previousElementSibling;
    row.remove();
    $("devices-status").textContent = r.ok ? `${label} is logged out.` : `${label} was already logged out.`;
    (next?.querySelector("button") || $("devices-title")).focus?.();
    return;
  }
  showError($("devices-error"), `${label} could not be logged out: ${r.error}`);
  button.focus();
}

// -- logging out here -------------------------------------------------------------------------

/** Whether this browser was said to be a shared or public computer when logging in. */
function sharedComputer() {
  try { return localStorage.getItem(SHARED_KEY()) === "1"; } catch { return false; }
}

/** Ask whether this browser keeps the history; the default follows "shared computer". */
function askLogout() {
  const dialog = $("dlg-logout");
  const remove = sharedComputer();
  $("history-remove").checked = remove;
  $("history-keep").checked = !remove;
  showError($("logout-error"), "");
  $("logout-go").disabled = false;
  dialog.showModal();
  $(remove ? "history-remove" : "history-keep").focus();
}

async function confirmLogout(ev) {
  ev.preventDefault();
  const dialog = $("dlg-logout");
  const remove = $("history-remove").checked;
  showError($("logout-error"), "");
  $("logout-status").textContent = "";
  $("logout-go").disabled = true;
  dialog.dataset.tried = "1";
  const r = await logOut(remove, {onBlocked: () => {
    // Another tab holds the history open: the deletion finishes once it is closed.
    $("logout-status").textContent = "Deleting this device's history: close the chat's other " +
      "tabs and windows to finish.";
  }});
  if (r.ok) {
    location.assign("/login");
    return;
  }
  $("logout-go").disabled = false;
  showError($("logout-error"), r.error);
  $("logout-go").focus();
}
