// What a person asks of the server through its JSON API (SPEC 4), and the local consequences:
// dialogues, groups, rooms, contacts, blocks. No DOM: a refusal is a "notice" event, and each
// function resolves with what the view needs next (a conversation to open, or whether it worked).

import {api} from "./net.js";
import {forgetDevice} from "./notify.js";
import {ME, PHONE_RE, emit, notify, saveConv, state} from "./state.js";
import * as sync from "./sync.js";

const NOT_A_PHONE = "A phone number is 10 to 15 digits";

/** A refused request: tell the person, and give `result` back. */
function refused(message, result = undefined) {
  emit("notice", message);
  return result;
}

/** A request that worked: an earlier refusal still on screen goes (issue 18, defect 8). */
function accepted(result) {
  emit("notice", "");
  return result;
}

/** The server's reason in words: "no such user: 4477…" names who has no account. */
function reason(r) {
  const m = /^no such user: ([0-9]+)$/.exec(r.data?.error || "");
  return m ? `No account has the phone number ${m[1]}` : r.data?.error;
}

/** Start a dialogue with `phone`; resolves with its conversation id, or null. */
export async function startDialogue(phone) {
  if (!PHONE_RE.test(phone)) return refused(NOT_A_PHONE, null);
  const r = await api("POST", "/chat/special/personal", {msg_to: phone});
  if (!r.ok) return refused(r.status === 404 ? "No account has this phone number" : r.data.error, null);
  await saveConv(`p:${phone}`, () => {});
  sync.refreshInfoSoon();
  return accepted(`p:${phone}`);
}

// -- groups ---------------------------------------------------------------------------------

/** Create group `name` with `participants` (phones); resolves with its conversation id, or null. */
export async function createGroup(name, participants) {
  const r = await api("POST", "/chat/special/group", {name, participants});
  if (!r.ok) return refused(reason(r), null);
  const g = r.data;
  await saveConv(`g:${g.key}`, (c) => {
    c.title = g.name;
    c.participants = g.participants;
    c.admins = g.admins;
  });
  return accepted(`g:${g.key}`);
}

/** Add or remove members ({add: [phone]} or {remove: [phone]}); resolves true when done. */
export async function patchGroup(conv, change) {
  const r = await api("PATCH", `/chat/info/group?key=${conv.ref}`, change);
  if (!r.ok) return refused(reason(r), false);
  await sync.refreshGroup(conv.ref);
  return accepted(true);
}

/** Leave a group: its socket closes for good, the history stays; resolves true when done. */
export async function leaveGroup(conv) {
  const r = await api("PATCH", `/chat/info/group?key=${conv.ref}`, {remove: [ME]});
  if (!r.ok) return refused(r.data.error, false);
  sync.refuse(conv.id);
  await saveConv(conv.id, (c) => { c.note = "You left this group."; });
  notify(conv.id);
  emit("note", conv.id);
  emit("list");
  return accepted(true);
}

// -- rooms ----------------------------------------------------------------------------------

/** Join room `name` (with its password when private); resolves with its id, or null. */
export async function joinRoom(name, password) {
  if (password !== undefined) {
    const r = await api("POST", "/chat/special/room/join", {room_name: name, password});
    if (!r.ok) return refused(r.data.error, null);
    // The answer says whether the room is private: its header says so (issue 18, defect 2).
    await saveConv(`r:${name}`, (c) => { c.private = !!r.data.private; });
  }
  const id = `r:${name}`;
  sync.allow(id);
  await saveConv(id, (c) => { c.left = false; c.note = null; });
  sync.wake(id);
  return accepted(id);
}

/** Follow a link to room `name` (no password asked); resolves with its id, or null. */
export async function joinRoomFromUrl(name) {
  const r = await api("GET", `/chat/info/room?room_name=${encodeURIComponent(name)}`);
  if (!r.ok) return refused(r.data.error, null);
  const id = `r:${name}`;
  await saveConv(id, (c) => { c.left = false; c.private = !!r.data.private; });
  sync.wake(id);
  return id;
}

/** Create room `name` (private with a password); resolves true when created. */
export async function createRoom(name, password) {
  const body = {room_name: name};
  if (password) body.password = password;
  const r = await api("POST", "/chat/special/room", body);
  if (!r.ok) return refused(r.data.error, false);
  await saveConv(`r:${name}`, (c) => { c.private = !!password; });
  return accepted(true);
}

/** Leave the room of `conv`: its socket closes, the history stays on the device. */
export async function leaveRoom(conv) {
  sync.close(conv.id);
  await saveConv(conv.id, (c) => { c.left = true; });
}

// -- contacts and blocks --------------------------------------------------------------------

/** Save `phone` as a contact named `name` (or rename it); resolves true when saved. */
export async function addContact(phone, name) {
  if (!PHONE_RE.test(phone)) return refused(NOT_A_PHONE, false);
  const r = await api("POST", "/chat/special/contact", {phone, name});
  if (!r.ok) return refused(r.status === 404 ? `No account has the phone number ${phone}` : r.data.error, false);
  await sync.refreshContacts();
  return accepted(true);
}

/** Remove `phone` from the contacts (the dialogue and its history stay). */
export async function removeContact(phone) {
  const r = await api("DELETE", `/chat/special/contact?phone=${phone}`);
  if (!r.ok) return refused(r.data.error);
  await sync.refreshContacts();
  return accepted(undefined);
}

/** Block `phone`: their messages no longer reach me (SPEC 5.5). */
export async function block(phone) {
  const r = await api("POST", "/chat/special/block", {phone});
  if (!r.ok) return refused(r.data.error);
  await sync.refreshContacts();
  emit("note", null);
  return accepted(undefined);
}

/** Unblock `phone`: their new messages reach me again. */
export async function unblock(phone) {
  const r = await api("DELETE", `/chat/special/block?phone=${phone}`);
  if (!r.ok) return refused(r.data.error);
  await sync.refreshContacts();
  emit("note", null);
  return accepted(undefined);
}

// -- my account (SPEC 10) -------------------------------------------------------------------
// These resolve with {ok, status, data, error}: the forms show the server's reason next to
// the field (not as a notice). A 401 means the session is gone: "logged-out".

async function account(method, path, body) {
  const r = await api(method, path, body);
  if (r.status === 401 && !state.leaving) emit("logged-out");
  return {...r, error: r.ok ? null : r.data.error};
}

/** Change my name and/or whether my presence is hidden ({name?, hide_presence?}). */
export async function updateAccount(change) {
  const r = await account("PATCH", "/chat/account", change);
  if (r.ok) sync.setAccountInfo(r.data);
  return r;
}

/** Change my password: 403 when `current` is wrong, 400 with the reason when `next` is weak,
 *  429 after too many attempts. The server ends my other devices' sessions. */
export function changePassword(current, next) {
  return account("POST", "/chat/account/password", {current, new: next});
}

/** Delete my account (as `run.py deluser`), then forget this device's history. */
export async function deleteAccount(password) {
  // The server ends the sessions at once: the sockets may close before the answer comes, and
  // the history must be forgotten before the page leaves for /login.
  state.leaving = true;
  const r = await account("DELETE", "/chat/account", {password});
  if (r.ok) {
    await sync.forget();
    await forgetDevice(true);
  } else {
    state.leaving = false;
  }
  return r;
}

// -- my devices (SPEC 7) ----------------------------------------------------------------------

/** {devices: [{id, label, created, last_active, current}]}, newest first. */
export function devices() {
  return account("GET", "/chat/devices");
}

/** End device `id` (another browser or a token): 200 {id, removed: true}, 404 when it is not mine
 *  (or already ended). Its sockets close at once on the server. */
export function removeDevice(id) {
  return account("DELETE", `/chat/devices?id=${encodeURIComponent(id)}`);
}

/**
 * Log this device out (POST /logout, SPEC 4). With `removeHistory`, this browser's history of
 * the account (its IndexedDB database) and its settings are deleted first, so that nothing is
 * left behind even if the page is closed while the request is on its way. Resolves {ok, error}.
 */
export async function logOut(removeHistory, {onBlocked} = {}) {
  state.leaving = true; // the session's sockets close with it: that is no "logged-out" to follow
  // Removing waits until the history is really deleted; `onBlocked` is called while another tab
  // holds it open (issue 18, defect 9).
  if (removeHistory) await sync.forget({onBlocked}); else sync.stop();
  // No more pushes to this browser, and no copy of the chat page for an offline start (SPEC 9).
  await forgetDevice(removeHistory);
  let ok = false;
  try {
    // The server answers 302 to /login: not followed, the page goes there itself.
    const resp = await fetch("/logout", {method: "POST", credentials: "same-origin", redirect: "manual"});
    ok = resp.type === "opaqueredirect" || resp.ok;
  } catch {
    return {ok: false, error: "The server cannot be reached: you are still logged in. Try again."};
  }
  return ok ? {ok, error: null} : {ok, error: "The server refused: you are still logged in. Try again."};
}

// -- administration (SPEC 10; admins only, anyone else gets 403) ------------------------------

const q = encodeURIComponent;

export const admin = {
  /** {users: [{phone, name, admin, disabled, created, last_seen, devices, waiting}]} */
  users: () => account("GET", "/chat/admin/users"),
  /** `change`: {disabled: bool} and/or {admin: bool}. */
  setUser: (phone, change) => account("PATCH", `/chat/admin/users?phone=${q(phone)}`, change),
  deleteUser: (phone) => account("DELETE", `/chat/admin/users?phone=${q(phone)}`),
  /** {invites: [{code, url, uses, uses_left, expires, created_by}]} */
  invites: () => account("GET", "/chat/admin/invites"),
  /** 201 {code, url, uses, expires} */
  createInvite: (uses, days) => account("POST", "/chat/admin/invites", {uses, days}),
  revokeInvite: (code) => account("DELETE", `/chat/admin/invites?code=${q(code)}`),
  /** {users, devices, sockets, stored_messages, attachment_bytes, database_bytes} */
  stats: () => account("GET", "/chat/admin/stats"),
};
