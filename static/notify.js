// Notifications and the installable app (SPEC 9), without the DOM: the service worker
// (static/sw.js), this device's notification settings, the push subscription, notifications
// while the page is hidden, mutes, and the app badge. See docs/client.md.
//
// The settings live in this browser, per account, in the IndexedDB database "chat-settings"
// (store "settings"), where the service worker reads them when a push comes:
//   {key: "account <phone>", notifications, previews, sound}
//   {key: "push", phone}: the account whose push subscription this browser holds (a browser
//   has one subscription per service worker, so the last account to turn notifications on).

import {attachmentsLabel} from "./db.js";
import {api} from "./net.js";
import {ME, emit, nameOf, pathOf, state, titleOf} from "./state.js";
import {formatTs, parseTs} from "./time.js";

export const settings = {notifications: false, previews: false, sound: true};
// "Always" (SPEC 9 leaves it to the client): the farthest timestamp the protocol can write.
export const ALWAYS = "9999-12-31 23:59:59";
const ALWAYS_US = parseTs(ALWAYS);
let registration = null;  // a promise of the service worker's registration, or null
let muteTimer = null;

// -- the service worker -----------------------------------------------------------------------

/** Register the service worker (static/sw.js at /sw.js, scope "/"); `onOpen(path)` is called
 *  when a click on a notification asks this window to open a conversation. */
export function registerWorker(onOpen) {
  if (!("serviceWorker" in navigator)) return;
  registration = navigator.serviceWorker.register("/sw.js", {scope: "/"}).catch((err) => {
    console.warn("service worker:", err);
    return null;
  });
  navigator.serviceWorker.addEventListener("message", (ev) => {
    const path = ev.data?.open;
    if (typeof path === "string" && path.startsWith("/chat")) onOpen(path);
  });
}

/** The service worker's registration once it is active (null without one). */
async function activeRegistration() {
  if (!registration || !(await registration)) return null;
  return navigator.serviceWorker.ready;
}

// -- settings ---------------------------------------------------------------------------------

function settingsDb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open("chat-settings", 1);
    req.onupgradeneeded = () => req.result.createObjectStore("settings", {keyPath: "key"});
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

/** Run `fn(store)` on the settings store; resolves with the request's result once committed. */
async function settingsTx(mode, fn) {
  const db = await settingsDb();
  try {
    return await new Promise((resolve, reject) => {
      const t = db.transaction("settings", mode);
      const req = fn(t.objectStore("settings"));
      t.oncomplete = () => resolve(req.result);
      t.onerror = t.onabort = () => reject(t.error);
    });
  } finally {
    db.close();
  }
}

const accountKey = () => `account ${ME}`;

/** Read this account's settings on this device (defaults: off, off, sound on). */
export async function loadSettings() {
  try {
    const saved = await settingsTx("readonly", (s) => s.get(accountKey()));
    if (saved) for (const k of Object.keys(settings)) if (typeof saved[k] === "boolean") settings[k] = saved[k];
  } catch (err) {
    console.warn("settings:", err);
  }
  // Permission taken back in the browser's settings: notifications are off here too.
  if (permission() === "denied") settings.notifications = false;
  return settings;
}

async function saveSettings() {
  await settingsTx("readwrite", (s) => s.put({key: accountKey(), ...settings}));
}

/** "granted", "denied", "default", or "unsupported" (no Notification API). */
export function permission() {
  return "Notification" in globalThis ? Notification.permission : "unsupported";
}

/** Show the message text in notifications, or not. */
export async function setPreviews(on) {
  settings.previews = on;
  await saveSettings();
}

/** Notifications ring, or not. */
export async function setSound(on) {
  settings.sound = on;
  await saveSettings();
}

/**
 * Turn notifications on (asks the browser's permission) or off (unsubscribes from push, and the
 * server forgets the subscription). Resolves {on, note}: whether they are on now, and a sentence
 * for the person. Once on, `subscribe()` asks for push (notifications with the chat closed).
 */
export async function setNotifications(on) {
  if (!on) {
    settings.notifications = false;
    await saveSettings();
    await unsubscribe();
    return {on: false, note: "Notifications are off on this device."};
  }
  if (permission() === "unsupported") return {on: false, note: "This browser cannot show notifications."};
  const answer = await Notification.requestPermission();
  settings.notifications = answer === "granted";
  await saveSettings();
  if (settings.notifications) await ownPushes();
  if (!settings.notifications) {
    return {on: false, note: "Notifications are blocked for this site: allow them in the browser's site settings."};
  }
  return {on: true, note: "Notifications are on while the chat is open; asking for push messages…"};
}

// -- push subscription --------------------------------------------------------------------------

function fromBase64url(text) {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
  return Uint8Array.from(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)), (c) => c.charCodeAt(0));
}

function sameBytes(buffer, bytes) {
  if (!buffer) return false;
  const a = new Uint8Array(buffer);
  return a.length === bytes.length && a.every((x, i) => x === bytes[i]);
}

const ONLY_OPEN = "you get notifications while the chat is open in a tab, not when it is closed.";
// A push service answers a subscription within seconds; one that never does (a browser without
// its vendor's push service, e.g. a Chromium built without Google's keys) must not hold the
// switch forever.
const SUBSCRIBE_TIMEOUT_MS = 10_000;

function timeout(ms, what) {
  return new Promise((resolve, reject) => {
    setTimeout(() => reject(new Error(`${what} did not answer within ${ms / 1000} s`)), ms);
  });
}

/** The pushes this browser gets are for this account from now on: the service worker opens its
 *  conversations and reads its settings (a browser holds one subscription). */
async function ownPushes() {
  await settingsTx("readwrite", (s) => s.put({key: "push", phone: ME}));
}

/**
 * Subscribe this browser to push with the server's key (GET /chat/push/key) and give the
 * subscription to the server (POST /chat/push/subscription, which replaces this device's earlier
 * one). Resolves {ok, note}. Idempotent: called at each start while notifications are on, so the
 * server has the subscription again after a logout and login, or a new server key.
 */
export async function subscribe() {
  const reg = await activeRegistration();
  if (!reg?.pushManager) return {ok: false, note: `This browser has no push messages: ${ONLY_OPEN}`};
  const r = await api("GET", "/chat/push/key");
  if (r.status === 404) return {ok: false, note: `This server sends no push messages: ${ONLY_OPEN}`};
  if (!r.ok || typeof r.data.public_key !== "string") {
    return {ok: false, note: `The server's push key could not be read (${r.data.error}): ${ONLY_OPEN}`};
  }
  const key = fromBase64url(r.data.public_key);
  await ownPushes();
  let sub;
  try {
    sub = await reg.pushManager.getSubscription();
    // Made with another key (the server's changed): the push service would refuse the server.
    if (sub && !sameBytes(sub.options.applicationServerKey, key)) {
      await sub.unsubscribe();
      sub = null;
    }
    sub ??= await Promise.race([
      reg.pushManager.subscribe({userVisibleOnly: true, applicationServerKey: key}),
      timeout(SUBSCRIBE_TIMEOUT_MS, "the browser's push service"),
    ]);
  } catch (err) {
    return {ok: false, note: `This browser could not subscribe to push messages (${err.message}): ${ONLY_OPEN}`};
  }
  const posted = await api("POST", "/chat/push/subscription", sub.toJSON());
  if (!posted.ok) return {ok: false, note: `The server refused the subscription (${posted.data.error}): ${ONLY_OPEN}`};
  return {ok: true, note: "Notifications are on, even when the chat is closed."};
}

/** Drop this browser's push subscription and the server's copy (DELETE /chat/push/subscription). */
export async function unsubscribe() {
  try {
    const reg = await activeRegistration();
    const sub = await reg?.pushManager?.getSubscription();
    await sub?.unsubscribe();
  } catch (err) {
    console.warn("push:", err);
  }
  await api("DELETE", "/chat/push/subscription");
}

/**
 * Logging out (or the account deleted): no more pushes to this browser, and no copy of the chat
 * page (it names the account) left for an offline start. With `removeSettings`, this account's
 * notification settings go too.
 */
export async function forgetDevice(removeSettings) {
  try {
    const reg = await activeRegistration();
    await (await reg?.pushManager?.getSubscription())?.unsubscribe();
  } catch { /* nothing to drop */ }
  try {
    for (const name of await caches.keys()) {
      if (name.startsWith("chat-shell-")) await (await caches.open(name)).delete("/chat");
    }
  } catch { /* no Cache Storage */ }
  try {
    await settingsTx("readwrite", (s) => s.delete("push"));
    if (removeSettings) await settingsTx("readwrite", (s) => s.delete(accountKey()));
  } catch { /* storage disabled */ }
}

// -- mutes (PUT and GET /chat/mute) -------------------------------------------------------------

const SERVER_KIND = {p: "personal", g: "group", r: "room"};
const CLIENT_KIND = {personal: "p", group: "g", room: "r"};

/** "p:PHONE" -> "personal:PHONE" (the server's name of a conversation, SPEC 9). */
export function serverConv(id) {
  return `${SERVER_KIND[id[0]]}:${id.slice(2)}`;
}

function clientConv(conv) {
  const i = String(conv).indexOf(":");
  const kind = CLIENT_KIND[String(conv).slice(0, i)];
  return kind ? `${kind}:${conv.slice(i + 1)}` : null;
}

/** Until when conversation `id` is muted (µs), or 0 when it is not. */
export function mutedUntil(id) {
  const until = state.mutes.get(id) || 0;
  return until > Date.now() * 1000 ? until : 0;
}

/** Muted for good ("Always"). */
export function mutedForever(id) {
  return mutedUntil(id) >= ALWAYS_US;
}

/** Read the mutes in force from the server (at start and at each connection: another device
 *  may have changed them). */
export async function refreshMutes() {
  const r = await api("GET", "/chat/mute");
  if (!r.ok || !Array.isArray(r.data.mutes)) return;
  state.mutes = new Map();
  for (const m of r.data.mutes) {
    const id = clientConv(m.conversation);
    const until = parseTs(m.until);
    if (id && !Number.isNaN(until)) state.mutes.set(id, until);
  }
  mutesChanged();
}

/**
 * Mute conversation `id` for `seconds` (a number), "always", or unmute it (null): PUT /chat/mute.
 * Resolves {ok, error}.
 */
export async function mute(id, seconds) {
  let until = null;
  if (seconds === "always") until = ALWAYS;
  else if (seconds !== null) until = formatTs((Date.now() + seconds * 1000) * 1000);
  const r = await api("PUT", "/chat/mute", {conversation: serverConv(id), until});
  if (r.status === 401) emit("logged-out");
  if (!r.ok) return {ok: false, error: r.data.error};
  const us = typeof r.data.until === "string" ? parseTs(r.data.until) : NaN;
  if (Number.isNaN(us)) state.mutes.delete(id); else state.mutes.set(id, us);
  mutesChanged();
  return {ok: true, error: null};
}

/** The list and the header show who is muted; again when the next mute runs out. */
function mutesChanged() {
  clearTimeout(muteTimer);
  const now = Date.now() * 1000;
  const next = Math.min(...[...state.mutes.values()].filter((u) => u > now));
  if (Number.isFinite(next)) {
    // setTimeout holds at most 2^31-1 ms (24.8 days); a later end is checked again then.
    muteTimer = setTimeout(mutesChanged, Math.min((next - now) / 1000 + 50, 2 ** 31 - 1));
  }
  emit("list");
  emit("header", null);
}

// -- notifications while the page is hidden, and the badge ------------------------------------

function countLabel(n) {
  return n === 1 ? "1 new message" : `${n} new messages`;
}

/**
 * New messages were stored (`fresh` records): with the page hidden (document.visibilityState,
 * kept in state.visible) and notifications on, one notification per conversation that is not
 * muted: the sender's name (and the group or room), the text only with previews on. Shown by
 * the service worker when there is one (the same notification a push shows, so a click on it
 * opens the conversation the same way), else with the Notification API.
 */
export async function notifyIncoming(fresh) {
  if (state.visible || !settings.notifications || permission() !== "granted") return;
  const last = new Map();
  for (const m of fresh) if (!m.mine && m.from !== ME) last.set(m.conv, m);
  for (const [id, m] of last) {
    const conv = state.convs.get(id);
    if (!conv || mutedUntil(id) || m.us <= (conv.readUs || 0)) continue;
    const from = nameOf(m.from);
    const title = conv.kind === "personal" ? from : `${from} in ${titleOf(conv)}`;
    const options = {
      body: settings.previews ? (m.body || attachmentsLabel(m.atts)) : countLabel(conv.unread || 1),
      tag: serverConv(id), renotify: true, silent: !settings.sound,
      icon: "/static/icon-192.png", badge: "/static/badge-96.png", timestamp: Math.floor(m.us / 1000),
      data: {url: pathOf(conv)},
    };
    const reg = await activeRegistration();
    if (reg) {
      await reg.showNotification(title, options);
    } else {
      const n = new Notification(title, options);
      n.onclick = () => { window.focus(); emit("open-path", options.data.url); n.close(); };
    }
  }
}

/** The unread total on the app's icon (Badging API, where there is one). */
export function showUnread(total) {
  if (!("setAppBadge" in navigator)) return;
  const done = total ? navigator.setAppBadge(total) : navigator.clearAppBadge();
  done.catch(() => { /* not installed, or not allowed: the title says it */ });
}
