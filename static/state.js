// The client's state, without the DOM: who I am, the conversations (a mirror of IndexedDB), the
// people, and the events the views listen to. See docs/client.md for how the modules fit.
//
// Views read `state` and subscribe with `on(event, fn)`; they change it only through the
// functions of sync.js and actions.js, which `emit` what changed.

export const PHONE_RE = /^[0-9]{10,15}$/;

/**
 * A phone number as people type it ("+44 7700 900123", "(020) 7946-0018") -> the digits the
 * server takes (SPEC 1: 10 to 15 digits, nothing else). Spaces, dashes, dots, brackets and one
 * leading "+" are dropped. Resolves {phone, error}: `phone` the digits when valid, else null with
 * `error` saying why in words (the field keeps what was typed).
 */
export function normalisePhone(typed) {
  const text = String(typed ?? "").trim();
  if (!text) return {phone: null, error: "Type a phone number."};
  const digits = text.replace(/^\+/, "").replace(/[\s\u00a0\-.()\u2010-\u2015]/g, "");
  if (!/^[0-9]*$/.test(digits)) {
    return {phone: null, error: `"${text}" is not a phone number: use digits (spaces, dashes, ` +
                                "brackets and a leading + are fine)."};
  }
  if (!PHONE_RE.test(digits)) {
    return {phone: null, error: `A phone number has 10 to 15 digits, with the country code; ` +
                                `"${text}" has ${digits.length}.`};
  }
  return {phone: digits, error: null};
}

// The account of this page: set once by `setAccount` (app.js, from the page) before anything runs.
export let ME = "";
export let MY_NAME = "";

export const state = {
  db: null,             // LocalDb (db.js), opened by sync.open()
  convs: new Map(),     // conversation id -> record (mirror of IndexedDB)
  names: new Map(),     // phone -> registered name (from /chat/info)
  contacts: new Map(),  // phone -> {phone, name}
  presence: new Map(),  // phone -> {online, lastSeenUs}
  blocked: new Set(),
  rooms: [],            // the server's rooms
  savedRooms: new Set(), // names of the rooms I saved (/chat/info "saved_rooms", SPEC 13)
  open: null,           // id of the conversation on screen
  visible: true,        // the page is on screen (document.visibilityState, kept by app.js)
  typing: new Map(),    // conversation id -> {who, timer}
  online: false,        // the receive socket is open
  admin: false,         // this account administers the server (/chat/info "admin", SPEC 10)
  hidePresence: null,   // the account hides its presence (SPEC 10); null: not known yet
  leaving: false,       // the account is being deleted: its end is not a "logged-out"
  storageFull: false,   // the browser refused to keep attachments (QuotaExceededError, SPEC 8)
  unkept: new Set(),    // ids of the messages whose attachments it refused (not acknowledged)
  mutes: new Map(),     // conversation id -> muted until (µs; SPEC 9, GET /chat/mute)
};

/**
 * Events, emitted synchronously in the order of the changes:
 * - "list": conversations changed (order, previews, badges, presence dots, typing);
 * - "open" (id | null): another conversation is on screen;
 * - "header" (id | null): the title line of conversation `id` (null: whichever is open);
 * - "note" (id | null): whether `id` can be written to (left, gone, locked, blocked);
 * - "message" (record): one message's state changed (sent, received, read, failed);
 * - "receipts" (id): a group's read positions moved (own bubbles show "read by n of m");
 * - "events" (id): a group's events changed (system lines: added, left, admin, renamed);
 * - "incoming" ([record]): new messages were stored; "outgoing" (record): one was written here;
 * - "removed" (record): an own failed message was deleted;
 * - "elsewhere" (id): another tab of this account changed conversation `id`;
 * - "contacts": contacts, blocks or presence changed;
 * - "online" (bool): the receive socket opened or closed;
 * - "storage" (bool): the browser's storage is full (attachments wait on the server), or not;
 * - "notice" (text): something to tell the person (a refusal from the server); "" when a later
 *   request succeeded: whatever refusal is still on screen goes;
 * - "account": my name, admin flag or presence setting changed;
 * - "open-path" (path): open the conversation of that page (a notification was clicked);
 * - "logged-out": the session is gone.
 */
const listeners = new Map();

/** Call `fn(detail)` on every `type` event (see the list above). */
export function on(type, fn) {
  if (!listeners.has(type)) listeners.set(type, []);
  listeners.get(type).push(fn);
}

/** Tell the listeners of `type`, in the order they subscribed. */
export function emit(type, detail) {
  for (const fn of listeners.get(type) || []) fn(detail);
}

/** This page's account (phone and registered name); joins the other tabs' channel. */
export function setAccount(phone, name) {
  ME = phone;
  MY_NAME = name;
  startChannel();
}

/** My registered name changed (here or on another device). */
export function setMyName(name) {
  MY_NAME = name;
}

/** The conversation `id` is on screen and the page is visible: its messages are being read. */
export function viewing(id) {
  return state.open === id && state.visible;
}

/** Conversation `id` (or null: none) is now the one on screen. */
export function setOpen(id) {
  state.open = id;
  emit("open", id);
}

/** The page became visible or hidden (document.visibilityState). */
export function setVisible(visible) {
  state.visible = visible;
}

// -- names and titles -----------------------------------------------------------------------

/** The name to show for `phone`: my contact name, else their registered name, else the phone. */
export function nameOf(phone) {
  if (phone === ME) return MY_NAME;
  return state.contacts.get(phone)?.name || state.names.get(phone) || phone;
}

/** The page of a conversation (SPEC 4), kept in the address bar; notifications open it. */
export function pathOf(conv) {
  if (conv.kind === "personal") return `/chat/personal/${ME}/${conv.ref}/`;
  if (conv.kind === "group") return `/chat/group/${ME}/${conv.ref}/`;
  return `/chat/room/${conv.ref}/`;
}

/** The title of a conversation record, as the list and the header show it. */
export function titleOf(conv) {
  if (conv.kind === "personal") return conv.ref === ME ? `${MY_NAME} (you)` : nameOf(conv.ref);
  if (conv.kind === "room") return `#${conv.ref}`;
  return conv.title || "Group";
}

/** A group's participants other than me (phones). */
export function others(conv) {
  return (conv.participants || []).filter((p) => p !== ME);
}

/** "<grp>-<sender>" -> {key, sender}; a plain phone -> null. */
export function groupSender(msgFrom) {
  const i = String(msgFrom).indexOf("-");
  return i < 0 ? null : {key: msgFrom.slice(0, i), sender: msgFrom.slice(i + 1)};
}

// -- conversation records -------------------------------------------------------------------

/** Keep `conv` (a record read from IndexedDB) as the current state of its conversation. */
export function merge(conv) {
  state.convs.set(conv.id, conv);
  return conv;
}

/** Apply `change(record)` to conversation `id` in IndexedDB (created when missing); resolves with it. */
export async function saveConv(id, change) {
  const conv = merge(await state.db.updateConv(id, change));
  notify(id);
  return conv;
}

/** Up to `limit` messages of conversation `id` older than `beforeUs`, oldest first. */
export function page(id, beforeUs, limit) {
  return state.db.page(id, beforeUs, limit);
}

// Other tabs of this account share the database: tell them what changed, and follow theirs.
let channel = null;
const notified = new Set();

function startChannel() {
  if (!("BroadcastChannel" in globalThis)) return;
  channel = new BroadcastChannel(`chat-${ME}`);
  channel.onmessage = (ev) => { followOtherTab(ev.data.conv).catch(console.error); };
}

/** Tell the other tabs that conversation `id` changed (once per microtask). */
export function notify(id) {
  if (!channel || notified.has(id)) return;
  notified.add(id);
  queueMicrotask(() => {
    notified.delete(id);
    channel.postMessage({conv: id});
  });
}

async function followOtherTab(id) {
  const conv = await state.db.getConv(id);
  if (!conv) return;
  merge(conv);
  emit("elsewhere", id);
  emit("list");
}
