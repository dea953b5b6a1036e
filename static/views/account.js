// The person's own account (SPEC 10): their name, hiding their online status, their password,
// their devices (views/devices.js, SPEC 7) and deleting the account. Server refusals are shown
// next to the form they concern.

import {changePassword, deleteAccount, updateAccount} from "../actions.js";
import {MY_NAME, ME, on, state} from "../state.js";
import {showError} from "../ui.js";
import {renderDevices} from "./devices.js";

const $ = (id) => document.getElementById(id);
export const MIN_PASSWORD = 10; // SPEC 10 (NIST SP 800-63B); the server checks it too
const HIDE_KEY = () => `chat.hidePresence.${ME}`;

/** Bind the profile button, the dialog's forms, and follow the account's changes. */
export function mount() {
  $("show-profile").addEventListener("click", openProfile);
  $("name-form").addEventListener("submit", saveName);
  $("hide-presence").addEventListener("change", savePresence);
  $("password-form").addEventListener("submit", savePassword);
  $("pw-repeat").addEventListener("input", () => $("pw-repeat").setCustomValidity(""));
  $("delete-start").addEventListener("click", () => showDeleteStep(true));
  $("delete-cancel").addEventListener("click", () => showDeleteStep(false));
  $("delete-form").addEventListener("submit", removeAccount);
  on("account", () => { if (!$("dlg-profile").open) $("profile-name").value = MY_NAME; });
}

/** What this device last knew of the presence setting, when the server's answer is not here. */
function hidePresenceKnown() {
  if (state.hidePresence !== null) return state.hidePresence;
  try { return localStorage.getItem(HIDE_KEY()) === "1"; } catch { return false; }
}

function openProfile() {
  for (const form of ["name-form", "password-form", "delete-form"]) $(form).reset();
  for (const id of ["name-error", "presence-error", "password-error", "delete-error"]) showError($(id), "");
  for (const id of ["name-status", "presence-status", "password-status"]) $(id).textContent = "";
  $("profile-name").value = MY_NAME;
  $("hide-presence").checked = hidePresenceKnown();
  showDeleteStep(false);
  $("dlg-profile").showModal();
  renderDevices();
}

/** Mark `input` as refused (or not), so that a screen reader says so on the field. */
function invalid(input, bad) {
  if (bad) input.setAttribute("aria-invalid", "true"); else input.removeAttribute("aria-invalid");
}

async function saveName(ev) {
  ev.preventDefault();
  const input = $("profile-name");
  const name = input.value.trim();
  $("name-status").textContent = "";
  showError($("name-error"), "");
  if (!name) return;
  const r = await updateAccount({name});
  invalid(input, !r.ok);
  showError($("name-error"), r.ok ? "" : r.error);
  if (r.ok) {
    input.value = MY_NAME;
    $("name-status").textContent = "Saved.";
  } else {
    input.focus();
  }
}

async function savePresence() {
  const box = $("hide-presence");
  const wanted = box.checked;
  $("presence-status").textContent = "";
  showError($("presence-error"), "");
  box.disabled = true;
  const r = await updateAccount({hide_presence: wanted});
  box.disabled = false;
  showError($("presence-error"), r.ok ? "" : r.error);
  if (!r.ok) {
    box.checked = !wanted;
    box.focus();
    return;
  }
  const hidden = typeof r.data.hide_presence === "boolean" ? r.data.hide_presence : wanted;
  box.checked = hidden;
  try { localStorage.setItem(HIDE_KEY(), hidden ? "1" : "0"); } catch { /* storage disabled */ }
  $("presence-status").textContent = hidden ? "Your online status is hidden."
    : "Your contacts can see when you are online.";
  box.focus();
}

async function savePassword(ev) {
  ev.preventDefault();
  const current = $("pw-current");
  const next = $("pw-new");
  const repeat = $("pw-repeat");
  $("password-status").textContent = "";
  showError($("password-error"), "");
  for (const input of [current, next, repeat]) invalid(input, false);
  let problem = null;
  let field = null;
  if ([...next.value].length < MIN_PASSWORD) {
    [problem, field] = [`The new password needs at least ${MIN_PASSWORD} characters.`, next];
  } else if (next.value !== repeat.value) {
    [problem, field] = ["The two new passwords differ.", repeat];
  } else if (next.value === current.value) {
    [problem, field] = ["The new password is the current one.", next];
  }
  if (!problem) {
    const r = await changePassword(current.value, next.value);
    if (r.ok) {
      $("password-form").reset();
      showError($("password-error"), "");
      $("password-status").textContent = "Password changed. Your other devices are logged out.";
      return;
    }
    if (r.status === 403) [problem, field] = ["The current password is wrong.", current];
    else if (r.status === 429) [problem, field] = [`Too many attempts: ${r.error}`, current];
    else if (r.status === 400) [problem, field] = [r.error, next];
    else [problem, field] = [r.error, current];
  }
  invalid(field, true);
  showError($("password-error"), problem);
  field.focus();
}

function showDeleteStep(shown) {
  $("delete-form").hidden = !shown;
  $("delete-start").hidden = shown;
  $("delete-start").setAttribute("aria-expanded", String(shown));
  if (shown) {
    $("delete-password").value = "";
    showError($("delete-error"), "");
    $("delete-password").focus();
  } else if ($("dlg-profile").open) {
    $("delete-start").focus();
  }
}

async function removeAccount(ev) {
  ev.preventDefault();
  const password = $("delete-password");
  const submit = $("delete-form").querySelector("button[type=submit]");
  showError($("delete-error"), "");
  submit.disabled = true;
  const r = await deleteAccount(password.value);
  submit.disabled = false;
  if (r.ok) {
    location.assign("/login");
    return;
  }
  const why = r.status === 403 ? "The password is wrong." : r.error;
  invalid(password, true);
  showError($("delete-error"), r.status === 429 ? `Too many attempts: ${r.error}` : why);
  password.focus();
}
