// The client's service worker (SPEC 9), served at /sw.js (chatserver/pages.py) so that its scope
// is the whole site. A classic script, not a module: every browser that has push runs it.
//
// - The app shell: installing keeps the chat page and the files it needs in the Cache Storage.
//   Pages and static files are then served network first (an online person always gets fresh
//   ones, and each answer refreshes the copy); without a network, from the copies. The history
//   itself is in IndexedDB (db.js), which the page reads as it always does.
// - Push (RFC 8030): one notification per push, built from the JSON payload the server sends
//   (chatserver/push.py): {kind, conversation, from_name, group_name?, count, text?}.
// - A click on a notification opens its conversation, in an open chat window when there is one.
// See docs/client.md, "Notifications and the installable app".

"use strict";

const CACHE = "chat-shell-v1";
// The page every chat URL is answered with when offline: app.js routes from the address itself.
const SHELL_PAGE = "/chat";
// Everything the chat page loads (app.js and the modules it imports). tests/browser/test_pwa.py
// checks that every module under static/ is listed.
const SHELL = [
  SHELL_PAGE,
  "/static/style.css",
  "/static/manifest.webmanifest",
  "/static/icon.svg",
  "/static/icon-192.png",
  "/static/icon-512.png",
  "/static/badge-96.png",
  "/static/app.js",
  "/static/actions.js",
  "/static/attachments.js",
  "/static/db.js",
  "/static/linkify.js",
  "/static/net.js",
  "/static/notify.js",
  "/static/references.js",
  "/static/state.js",
  "/static/sync.js",
  "/static/time.js",
  "/static/ui.js",
  "/static/views/account.js",
  "/static/views/admin.js",
  "/static/views/attach.js",
  "/static/views/bubble.js",
  "/static/views/conversation.js",
  "/static/views/devices.js",
  "/static/views/dialogs.js",
  "/static/views/groupinfo.js",
  "/static/views/list.js",
  "/static/views/longtext.js",
  "/static/views/media.js",
  "/static/views/mute.js",
  "/static/views/offline.js",
  "/static/views/rooms.js",
  "/static/views/refs.js",
  "/static/views/search.js",
  "/static/views/settings.js",
];
const CHAT_PAGE_RE = /^\/chat(?:\/personal\/[0-9]+\/[0-9]{10,15}\/|\/group\/[0-9]+\/[A-Za-z0-9]{10}\/|\/room\/[A-Za-z0-9_-]{1,64}\/)?$/;
const PHONE_RE = /^[0-9]{10,15}$/;
const GROUP_KEY_RE = /^[A-Za-z0-9]{10}$/;
const ROOM_RE = /^[A-Za-z0-9_-]{1,64}$/;

// -- the app shell ----------------------------------------------------------------------------

self.addEventListener("install", (event) => {
  event.waitUntil(precache().then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) {
      if (name.startsWith("chat-shell-") && name !== CACHE) await caches.delete(name);
    }
    // Control the page that registered this worker at once: it works offline from now on.
    await self.clients.claim();
  })());
});

/** Keep a copy of each shell file; one that fails (no login: /chat redirects) is left out. */
async function precache() {
  const cache = await caches.open(CACHE);
  await Promise.all(SHELL.map(async (path) => {
    try {
      const response = await fetch(path, {cache: "no-cache", credentials: "same-origin"});
      if (response.ok && !response.redirected) await cache.put(path, response);
    } catch { /* offline while installing: the next visit fills it in */ }
  }));
}

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET") return;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin) return;
  if (request.mode === "navigate" && CHAT_PAGE_RE.test(url.pathname)) {
    event.respondWith(networkFirst(request, SHELL_PAGE));
  } else if (url.pathname.startsWith("/static/")) {
    event.respondWith(networkFirst(request, url.pathname));
  }
  // Anything else (JSON, attachments, /login) goes to the network as if there were no worker.
});

/**
 * The network's answer, a copy of it kept under `key` when it is a page or file to keep (200,
 * not redirected: a logged-out /chat redirects to /login); without a network, the copy.
 */
async function networkFirst(request, key) {
  const cache = await caches.open(CACHE);
  try {
    const response = await fetch(request);
    if (response.ok && !response.redirected && response.type === "basic") {
      await cache.put(key, response.clone());
    }
    return response;
  } catch (err) {
    const copy = await cache.match(key);
    if (copy) return copy;
    throw err;
  }
}

// -- the device's settings (written by static/notify.js) ---------------------------------------

/** {phone, previews, sound}: the account whose push subscription this browser holds, and its
 *  settings on this device; defaults when the page never wrote them. */
async function deviceSettings() {
  const defaults = {phone: "", previews: false, sound: true};
  try {
    const db = await new Promise((resolve, reject) => {
      const req = indexedDB.open("chat-settings", 1);
      req.onupgradeneeded = () => req.result.createObjectStore("settings", {keyPath: "key"});
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
    const get = (key) => new Promise((resolve, reject) => {
      const req = db.transaction("settings").objectStore("settings").get(key);
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
    const owner = await get("push");
    const mine = owner ? await get(`account ${owner.phone}`) : null;
    db.close();
    return {...defaults, ...(mine || {}), phone: owner?.phone || ""};
  } catch {
    return defaults;
  }
}

// -- push ---------------------------------------------------------------------------------------

self.addEventListener("push", (event) => {
  event.waitUntil(showPush(event.data));
});

/** The page of server conversation `conv` ("personal:PHONE", "group:KEY", "room:NAME") for
 *  account `me`; the chat itself when either is unknown. */
function pageOf(conv, me) {
  const [kind, ref] = String(conv).split(/:(.*)/s);
  if (kind === "room" && ROOM_RE.test(ref)) return `/chat/room/${ref}/`;
  if (!PHONE_RE.test(me)) return "/chat";
  if (kind === "personal" && PHONE_RE.test(ref)) return `/chat/personal/${me}/${ref}/`;
  if (kind === "group" && GROUP_KEY_RE.test(ref)) return `/chat/group/${me}/${ref}/`;
  return "/chat";
}

/** Title and options of the notification for push `payload` (see the top of this file). */
function notificationFor(payload, settings) {
  const from = typeof payload.from_name === "string" && payload.from_name ? payload.from_name : "Someone";
  const group = typeof payload.group_name === "string" && payload.group_name ? payload.group_name : "";
  const count = Number.isInteger(payload.count) && payload.count > 0 ? payload.count : 1;
  const text = typeof payload.text === "string" && settings.previews ? payload.text : "";
  const conv = typeof payload.conversation === "string" ? payload.conversation : "";
  return {
    title: group ? `${from} in ${group}` : from,
    options: {
      body: text || (count === 1 ? "1 new message" : `${count} new messages`),
      // One notification per conversation: a newer push replaces it, and rings again.
      tag: conv || "chat",
      renotify: true,
      silent: !settings.sound,
      icon: "/static/icon-192.png",
      badge: "/static/badge-96.png",
      timestamp: Date.now(),
      data: {url: pageOf(conv, settings.phone)},
    },
  };
}

async function showPush(data) {
  let payload = {};
  try {
    payload = data ? data.json() : {};
  } catch { /* not JSON: a notification without details, the push must show one */ }
  if (!payload || typeof payload !== "object") payload = {};
  const {title, options} = notificationFor(payload, await deviceSettings());
  await self.registration.showNotification(title, options);
}

// The browser replaced the subscription (it expired, or the push service rotated it): subscribe
// again with the same key and tell the server, with this device's session cookie.
self.addEventListener("pushsubscriptionchange", (event) => {
  event.waitUntil((async () => {
    const old = event.oldSubscription;
    const fresh = event.newSubscription ||
      (old ? await self.registration.pushManager.subscribe(old.options) : null);
    if (!fresh) return;
    await fetch("/chat/push/subscription", {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json"}, body: JSON.stringify(fresh.toJSON()),
    });
  })());
});

// -- opening a conversation -------------------------------------------------------------------

self.addEventListener("notificationclick", (event) => {
  event.waitUntil(openFromNotification(event.notification));
});

/**
 * What a click on `notification` does: close it; in an open chat window, focus it and open the
 * conversation there (app.js follows the {open: path} message without reloading); with none,
 * open a window on the conversation's page.
 */
async function openFromNotification(notification) {
  notification.close();
  const path = notification.data && typeof notification.data.url === "string" &&
    CHAT_PAGE_RE.test(notification.data.url) ? notification.data.url : "/chat";
  const windows = await self.clients.matchAll({type: "window", includeUncontrolled: true});
  const chat = windows.find((c) => CHAT_PAGE_RE.test(new URL(c.url).pathname));
  if (!chat) return self.clients.openWindow(path);
  try {
    await chat.focus();
  } catch { /* focusing needs the click's activation; the conversation opens anyway */ }
  chat.postMessage({open: path});
  return chat;
}

// TEST HOOK (tests/browser/test_pwa.py): the DevTools protocol can deliver a push but cannot click
// a notification. A page of this origin may post {test_click: TAG}: the notification showing with
// that tag gets what a click would do (openFromNotification), and nothing else happens. It opens
// nothing that a click on a notification already shown would not.
self.addEventListener("message", (event) => {
  const tag = event.data && event.data.test_click;
  if (typeof tag !== "string") return;
  event.waitUntil(self.registration.getNotifications({tag}).then((shown) => (
    shown.length ? openFromNotification(shown[0]) : undefined)));
});
