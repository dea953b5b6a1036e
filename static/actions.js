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

/** A refusal that a dialog shows in place: {ok: false, error} (and `extra`'s fields). */
function failed(r, extra = {}) {
  return {ok: false, error: reason(r) || `refused (${r.status})`, ...extra};
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

/**
 * Change group `conv` (PATCH /chat/info/group: any of {name, add: [phone], remove: [phone],
 * admins: [phone]}; admins only, but anyone may remove themselves). Resolves {ok, error}: the
 * group panel shows the server's reason in place (a modal dialog would hide a toast).
 */
export async function patchGroup(conv, change) {
  const r = await api("PATCH", `/chat/info/group?key=${conv.ref}`, change);
  if (!r.ok) return failed(r);
  await sync.refreshGroup(conv.ref);
  return accepted({ok: true, error: null});
}

/** Leave a group: its socket closes for good, the history stays; resolves {ok, error}. */
export async function leaveGroup(conv) {
  const r = await api("PATCH", `/chat/info/group?key=${conv.ref}`, {remove: [ME]});
  if (!r.ok) return failed(r);
  sync.refuse(conv.id);
  await saveConv(conv.id, (c) => { c.note = "You left this group."; });
  notify(conv.id);
  emit("note", conv.id);
  emit("list");
  return accepted({ok: true, error: null});
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

/** Create room `name` (private with a password; `category`: a label for the catalogue, or
 *  empty); resolves {ok, error} (the rooms dialog shows the reason in place). */
export async function createRoom(name, password, category = "") {
  const body = {room_name: name};
  if (password) body.password = password;
  if (category) body.category = category;
  const r = await api("POST", "/chat/special/room", body);
  if (!r.ok) return failed(r);
  await saveConv(`r:${name}`, (c) => { c.private = !!password; });
  return accepted({ok: true, error: null});
}

/**
 * The room catalogue (SPEC 13, GET /chat/rooms): rooms whose name contains `q` (any case), in
 * `category` when given, newest first, at most 100. Resolves {ok, error, rooms: [{room_name,
 * category (string|null), private, online, saved, mine}]}.
 */
export async function findRooms(q = "", category = "") {
  const params = new URLSearchParams({q});
  if (category) params.set("category", category);
  const r = await api("GET", `/chat/rooms?${params}`);
  if (r.status === 401) emit("logged-out");
  if (!r.ok) return failed(r, {rooms: []});
  return {ok: true, error: null, rooms: Array.isArray(r.data.rooms) ? r.data.rooms : []};
}

/**
 * Save room `name` (PUT /chat/rooms/saved) or unsave it (DELETE); resolves {ok, error}. A saved
 * room is in the conversation list on every device (sync.refreshInfo): saving one joins it here
 * too (a private one then asks for its password when opened).
 */
export async function saveRoom(name, saved) {
  const r = await api(saved ? "PUT" : "DELETE", `/chat/rooms/saved?room_name=${encodeURIComponent(name)}`);
  if (!r.ok) return failed(r);
  if (saved) {
    state.savedRooms.add(name);
    await sync.joinSaved(name);
  } else {
    state.savedRooms.delete(name);
  }
  emit("list");
  return {ok: true, error: null};
}

/**
 * Close my own room (DELETE /chat/special/room, creator only): the server deletes its history
 * and closes everyone's socket in it with 4404. Resolves {ok, error}.
 */
export async function closeRoom(name) {
  const r = await api("DELETE", `/chat/special/room?room_name=${encodeURIComponent(name)}`);
  if (!r.ok) return failed(r);
  state.savedRooms.delete(name);
  await sync.roomClosed(`r:${name}`);
  return {ok: true, error: null};
}

/** Leave the room of `conv`: its socket closes, the history stays on the device. */
export async function leaveRoom(conv) {
  // A saved room comes back to the list at the next connection: leaving it unsaves it.
  if (state.savedRooms.has(conv.ref)) await saveRoom(conv.ref, false);
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
