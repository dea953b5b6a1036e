// The chat client: state, the protocol's flows, and rendering.
//
// Flows (SPEC 5):
// - one receive socket (/ws/chat/special/<me>/) for every push; on each (re)connect it sends
//   fetch_msgs and fetch_grp_msgs;
// - a send socket per dialogue and per group, opened when needed; a socket per joined room;
// - every received message is committed to IndexedDB first, and only then acknowledged
//   (msg_received / grp_msg_received) — the server deletes it on that acknowledgement;
// - an outgoing message is stored "pending" first, sent, and marked "sent" on msg_sent; whatever
//   is still pending is sent again, with the same sent_timestamp, whenever its socket reopens.

import {LocalDb} from "./db.js";
import {Link, api, paths} from "./net.js";
import {ageLabel, dayKey, dayLabel, fullLabel, lastSeenLabel, newStamp, parseTs} from "./time.js";
import {avatar, el, hash, hydrateIcons, icon, toast} from "./ui.js";

const meEl = document.getElementById("me");
const ME = meEl.dataset.phone;
const MY_NAME = meEl.dataset.name;
const PAGE = 50;
const TYPING_SHOWN_MS = 2000;
// The server passes one typing event a second per socket; a little more keeps clear of that edge
// while the other side's indicator (2 s) stays on as long as the typing goes on.
const TYPING_SENT_EVERY_MS = 1500;
const PHONE_RE = /^[0-9]{10,15}$/;
const $ = (id) => document.getElementById(id);

const state = {
  db: null,
  convs: new Map(),     // conversation id -> record (mirror of IndexedDB)
  names: new Map(),     // phone -> registered name (from /chat/info)
  contacts: new Map(),  // phone -> {phone, name}
  presence: new Map(),  // phone -> {online, lastSeenUs}
  blocked: new Set(),
  rooms: [],            // the server's rooms
  open: null,           // id of the conversation on screen
  view: null,           // {id, messages: [...], nodes: Map(id -> li), hasMore, loading}
  typing: new Map(),    // conversation id -> {who, timer}
  links: new Map(),     // conversation id -> Link (send socket, or room socket)
  sentOn: new Map(),    // conversation id -> {fifo: [us], set: Set(us)} on the current socket
  flushing: new Map(),  // conversation id -> Promise of the flush in progress
  refused: new Set(),   // conversations whose sockets are refused (left, gone, locked)
  receive: null,
  online: false,
  lastTypingSent: 0,
  typingTimer: null,
  drafts: new Map(),    // conversation id -> unsent text
  pushes: Promise.resolve(),
};

// -- names and titles -----------------------------------------------------------------------

function nameOf(phone) {
  if (phone === ME) return MY_NAME;
  return state.contacts.get(phone)?.name || state.names.get(phone) || phone;
}

function titleOf(conv) {
  if (conv.kind === "personal") return conv.ref === ME ? `${MY_NAME} (you)` : nameOf(conv.ref);
  if (conv.kind === "room") return `#${conv.ref}`;
  return conv.title || "Group";
}

function convUrl(conv) {
  if (conv.kind === "personal") return `/chat/personal/${ME}/${conv.ref}/`;
  if (conv.kind === "group") return `/chat/group/${ME}/${conv.ref}/`;
  return `/chat/room/${conv.ref}/`;
}

function others(conv) {
  return (conv.participants || []).filter((p) => p !== ME);
}

// -- local state ----------------------------------------------------------------------------

function merge(conv) {
  state.convs.set(conv.id, conv);
  return conv;
}

async function saveConv(id, change) {
  const conv = merge(await state.db.updateConv(id, change));
  notify(id);
  return conv;
}

// Other tabs of this account share the database: tell them what changed, and follow theirs.
const channel = "BroadcastChannel" in window ? new BroadcastChannel(`chat-${ME}`) : null;
const notified = new Set();

function notify(id) {
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
  if (state.view?.id === id) {
    const view = state.view;
    const messages = await state.db.page(id, Infinity, Math.max(PAGE, view.messages.length));
    if (state.view !== view) return;
    view.messages = messages;
    renderMessages("append");
    renderHeader();
  }
  renderList();
}

function viewing(id) {
  return state.open === id && document.visibilityState === "visible";
}

// -- the receive socket ---------------------------------------------------------------------

function startReceiving() {
  state.receive = new Link(paths.receive(ME), {
    wanted: () => true,
    onOpen: (link) => {
      setOnline(true);
      link.send({command: "fetch_msgs", msg_to: ME});
      link.send({command: "fetch_grp_msgs", msg_to: ME});
      for (const [id, l] of state.links) if (!state.refused.has(id) && l.wanted()) l.wake();
      flushAll();
      refreshInfo();
      refreshContacts();
      refreshReceipts();
    },
    onFrame: (frame) => {
      // One push at a time, in order: each waits for the database writes of the one before.
      state.pushes = state.pushes.then(() => onPush(frame)).catch((err) => console.error(err));
    },
    onClose: (link, {opened, code}) => {
      setOnline(false);
      if (!opened || code === 1008) checkSession();
    },
  });
  state.receive.wake();
}

async function checkSession() {
  const {status} = await api("GET", "/chat/info");
  if (status === 401) location.assign("/login");
}

function setOnline(online) {
  state.online = online;
  document.body.classList.toggle("is-offline", !online);
  clearInterval(setOnline.timer);
  $("offline").hidden = online;
  if (!online) {
    const tick = () => {
      const link = state.receive;
      const left = Math.ceil((link.retryAt - Date.now()) / 1000);
      $("offline-text").textContent = link.ws || left <= 0
        ? "Offline — connecting…" : `Offline — reconnecting in ${left} s`;
    };
    tick();
    setOnline.timer = setInterval(tick, 500);
  }
}

async function onPush(f) {
  switch (f.command) {
    case "new_msg": return receiveMessages([f]);
    case "fetch_msgs":
    case "fetch_grp_msgs": return receiveMessages(Array.isArray(f.messages) ? f.messages : []);
    case "msg_received": return onReceipt(f);
    case "msg_read": return onRead(f);
    case "is_typing": return onTyping(f);
    case "presence": return onPresence(f);
    case "error": console.warn("server:", f.message); return undefined;
    default: return undefined;
  }
}

/** "<grp>-<sender>" -> {key, sender}; a plain phone -> null. */
function groupSender(msgFrom) {
  const i = String(msgFrom).indexOf("-");
  return i < 0 ? null : {key: msgFrom.slice(0, i), sender: msgFrom.slice(i + 1)};
}

async function receiveMessages(frames) {
  const items = [];
  const acks = [];
  for (const f of frames) {
    const us = parseTs(f.sent_timestamp);
    if (Number.isNaN(us) || typeof f.message !== "string" || typeof f.msg_from !== "string") continue;
    const grp = groupSender(f.msg_from);
    const conv = grp ? `g:${grp.key}` : `p:${f.msg_from}`;
    const from = grp ? grp.sender : f.msg_from;
    items.push({conv, from, us, ts: f.sent_timestamp, body: f.message});
    acks.push({conv, from, ts: f.sent_timestamp, grp: !!grp});
  }
  if (!items.length) return;
  // Committed to this device first ...
  const {fresh, convs} = await state.db.storeIncoming(
    items, (conv, msg) => !msg.mine && msg.from !== ME && !viewing(conv.id));
  // ... and only then acknowledged: the server deletes what is acknowledged.
  for (const a of acks) {
    const peer = a.conv.slice(2);
    linkFor(a.conv).send(a.grp
      ? frame("grp_msg_received", peer, a.ts, a.from)
      : frame("msg_received", peer, a.ts));
  }
  afterIncoming(fresh, convs);
}

function afterIncoming(fresh, convs) {
  for (const conv of convs) {
    merge(conv);
    notify(conv.id);
    if (conv.kind === "group" && !conv.participants) refreshGroup(conv.ref);
    if (conv.kind === "personal" && !state.names.has(conv.ref)) refreshInfoSoon();
  }
  for (const msg of fresh) {
    const t = state.typing.get(msg.conv);
    if (t && t.who === msg.from) clearTyping(msg.conv);
  }
  const shown = fresh.filter((m) => state.view && m.conv === state.view.id);
  if (shown.length) {
    for (const m of shown) insertIntoView(m);
    const last = shown.at(-1);
    if (!last.mine) $("announce").textContent = `${nameOf(last.from)}: ${last.body}`;
    renderMessages("append");
    markRead(state.open);
  }
  renderList();
}

/** A frame on a send or room socket: the five fields of SPEC 5. */
function frame(command, msgTo, message, overrideTo) {
  return {message, command, msg_from: ME, msg_to: overrideTo ?? msgTo,
          sent_timestamp: newStamp(ME).ts};
}

// -- receipts, reads, typing, presence --------------------------------------------------------

async function onReceipt(f) {
  const us = parseTs(f.message);
  if (Number.isNaN(us)) return;
  const grp = groupSender(f.msg_from);
  let msg;
  if (grp) {
    msg = await state.db.addReceipt(`g:${grp.key}`, ME, us, grp.sender);
  } else {
    msg = await state.db.setState(`p:${f.msg_from}`, ME, us, "received");
  }
  if (msg) updateBubble(msg);
}

async function onRead(f) {
  const us = parseTs(f.message);
  if (Number.isNaN(us)) return;
  const grp = groupSender(f.msg_from);
  if (grp) {
    const id = `g:${grp.key}`;
    if (!state.convs.has(id)) return;
    await saveConv(id, (c) => {
      c.readPos = c.readPos || {};
      c.readPos[grp.sender] = Math.max(c.readPos[grp.sender] || 0, us);
    });
    refreshOwnBubbles(id);
    return;
  }
  const id = `p:${f.msg_from}`;
  await saveConv(id, (c) => { c.peerReadUs = Math.max(c.peerReadUs || 0, us); });
  for (const msg of await state.db.advanceUpTo(id, us, "read")) updateBubble(msg);
}

function onTyping(f) {
  let id;
  let who;
  const grp = groupSender(f.msg_from);
  if (grp) {
    id = `g:${grp.key}`;
    who = grp.sender;
  } else {
    id = `p:${f.msg_from}`;
    who = f.msg_from;
  }
  showTyping(id, who);
}

function showTyping(id, who) {
  if (who === ME || !state.convs.has(id)) return;
  const current = state.typing.get(id);
  if (current) clearTimeout(current.timer);
  state.typing.set(id, {who, timer: setTimeout(() => clearTyping(id), TYPING_SHOWN_MS)});
  renderList();
  if (state.open === id) renderHeader();
}

function clearTyping(id) {
  const t = state.typing.get(id);
  if (!t) return;
  clearTimeout(t.timer);
  state.typing.delete(id);
  renderList();
  if (state.open === id) renderHeader();
}

function onPresence(f) {
  const online = f.message === "online";
  const before = state.presence.get(f.msg_from) || {};
  state.presence.set(f.msg_from, {
    online, lastSeenUs: online ? before.lastSeenUs : Date.now() * 1000});
  renderList();
  if (state.open === `p:${f.msg_from}`) renderHeader();
  if ($("dlg-contacts").open) renderContacts();
}

// -- send sockets and the outbox ------------------------------------------------------------

function linkFor(id) {
  let link = state.links.get(id);
  if (link && !link.stopped) return link;
  if (link && state.refused.has(id)) return link; // stays stopped: frames for it are dropped
  const kind = id[0];
  const ref = id.slice(2);
  const path = kind === "p" ? paths.personal(ME, ref)
    : kind === "g" ? paths.group(ME, ref) : paths.room(ref);
  link = new Link(path, {
    wanted: () => !state.refused.has(id) &&
      (state.open === id || kind === "r" || hasPending(id)),
    onOpen: () => {
      state.sentOn.set(id, {fifo: [], set: new Set()});
      flush(id);
    },
    onFrame: (f) => {
      state.pushes = state.pushes.then(() => onLinkFrame(id, f)).catch((e) => console.error(e));
    },
    onClose: (l, {opened}) => {
      state.sentOn.delete(id);
      // Refused at the handshake while the server is up: find out why, once.
      if (!opened && state.online) diagnose(id);
    },
  });
  if (state.refused.has(id)) link.stop();
  state.links.set(id, link);
  return link;
}

const pendingConvs = new Set();

function hasPending(id) {
  return pendingConvs.has(id);
}

/** Send, in order, every pending message of `id` not yet sent on its current socket. */
function flush(id) {
  const running = state.flushing.get(id);
  if (running) {
    running.again = true;
    return;
  }
  const job = {again: false};
  state.flushing.set(id, job);
  (async () => {
    do {
      job.again = false;
      const pending = (await state.db.pending()).filter((m) => m.conv === id);
      if (pending.length) pendingConvs.add(id); else pendingConvs.delete(id);
      const link = linkFor(id);
      if (!link.isOpen) {
        if (pending.length && !state.refused.has(id)) link.wake();
        break;
      }
      const sent = state.sentOn.get(id);
      for (const msg of pending) {
        if (!sent || sent.set.has(msg.us)) continue;
        if (link.trySend(outgoingFrame(msg))) {
          sent.fifo.push(msg.us);
          sent.set.add(msg.us);
        }
      }
    } while (job.again);
  })().catch((e) => console.error(e)).finally(() => state.flushing.delete(id));
}

async function flushAll() {
  const pending = await state.db.pending();
  for (const id of new Set(pending.map((m) => m.conv))) {
    pendingConvs.add(id);
    if (!state.refused.has(id)) flush(id);
  }
}

function outgoingFrame(msg) {
  const ref = msg.conv.slice(2);
  const command = {p: "new_msg", g: "new_grp_msg", r: "room_msg"}[msg.conv[0]];
  return {message: msg.body, command, msg_from: ME, msg_to: ref, sent_timestamp: msg.ts};
}

async function onLinkFrame(id, f) {
  const sent = state.sentOn.get(id);
  if (f.command === "msg_sent") {
    const us = parseTs(f.message);
    if (sent) sent.fifo = sent.fifo.filter((x) => x !== us);
    const msg = await state.db.setState(id, ME, us, "sent");
    if (msg) updateBubble(msg);
    flushDone(id);
  } else if (f.command === "room_msg" || f.command === "fetch_room_msgs") {
    await onRoomFrames(id, f.command === "room_msg" ? [f] : f.messages || [], f.command);
  } else if (f.command === "is_typing") {
    if (id[0] === "r") showTyping(id, f.msg_from);
  } else if (f.command === "error") {
    await onLinkError(id, f);
  }
}

async function flushDone(id) {
  const pending = (await state.db.pending()).some((m) => m.conv === id);
  if (!pending) pendingConvs.delete(id);
}

/** A refused frame. The error frame does not say which message it was about; replies come in
 *  order, so for a refused message it is the oldest one still waiting for its reply. */
async function onLinkError(id, f) {
  if (!["new_msg", "new_grp_msg", "room_msg"].includes(f.type)) {
    if (!/received|read|typing/.test(f.type)) toast(f.message);
    return;
  }
  const sent = state.sentOn.get(id);
  const us = sent?.fifo.shift();
  if (us === undefined) return toast(f.message);
  if (/rate limit|try again/i.test(f.message)) {
    sent.set.delete(us); // not stored: send it again shortly, same sent_timestamp
    setTimeout(() => flush(id), 1500);
    return undefined;
  }
  sent.set.delete(us); // a retry sends it again on this socket
  const msg = await state.db.setState(id, ME, us, "failed", {error: f.message});
  if (msg) updateBubble(msg);
  flushDone(id);
  return undefined;
}

/** Why does the server refuse this conversation's socket? Stop retrying when it is for good. */
async function diagnose(id) {
  const conv = state.convs.get(id);
  if (!conv || diagnose.busy?.has(id)) return;
  diagnose.busy = diagnose.busy || new Set();
  diagnose.busy.add(id);
  try {
    const ref = encodeURIComponent(conv.ref);
    let note = null;
    if (conv.kind === "personal") {
      const r = await api("GET", `/chat/info/personal?msg_to=${ref}`);
      if (r.status === 404) note = "This account no longer exists.";
    } else if (conv.kind === "group") {
      const r = await api("GET", `/chat/info/group?key=${ref}`);
      if (r.status === 403 || r.status === 404) note = "You are no longer in this group.";
    } else {
      const r = await api("GET", `/chat/info/room?room_name=${ref}`);
      if (r.status === 404) note = "This room no longer exists.";
      else if (r.ok && r.data.private) note = "locked";
    }
    if (note) {
      state.refused.add(id);
      state.links.get(id)?.stop();
      await saveConv(id, (c) => { c.note = note; });
      if (state.open === id) renderConvState();
    }
  } finally {
    diagnose.busy.delete(id);
  }
}

// -- rooms ----------------------------------------------------------------------------------

async function onRoomFrames(id, frames, command) {
  const items = [];
  const mine = [];
  for (const f of frames) {
    const us = parseTs(f.sent_timestamp);
    if (Number.isNaN(us) || typeof f.message !== "string") continue;
    if (f.msg_from === ME) mine.push(us);
    items.push({conv: id, from: f.msg_from, us, ts: f.sent_timestamp, body: f.message,
                ...(f.msg_from === ME ? {mine: 1, state: "sent"} : {})});
  }
  const conv = state.convs.get(id);
  const first = command === "fetch_room_msgs" && conv && !conv.seenHistory;
  const {fresh, convs} = await state.db.storeIncoming(
    items, (c, msg) => !first && !msg.mine && !viewing(c.id));
  // The room echoes my own messages: that is their confirmation.
  const sent = state.sentOn.get(id);
  for (const us of mine) {
    if (sent) sent.fifo = sent.fifo.filter((x) => x !== us);
    const msg = await state.db.setState(id, ME, us, "sent");
    if (msg) updateBubble(msg);
  }
  if (mine.length) flushDone(id);
  if (first) await saveConv(id, (c) => { c.seenHistory = true; });
  afterIncoming(fresh, convs);
}

async function joinRoom(name, password) {
  if (password !== undefined) {
    const r = await api("POST", "/chat/special/room/join", {room_name: name, password});
    if (!r.ok) return toast(r.data.error);
  }
  const id = `r:${name}`;
  state.refused.delete(id);
  if (state.links.get(id)?.stopped) state.links.delete(id);
  await saveConv(id, (c) => { c.left = false; c.note = null; });
  linkFor(id).wake();
  return openConv(id);
}

// -- reading --------------------------------------------------------------------------------

/** The conversation is on screen: tell the senders, clear the badge. */
async function markRead(id) {
  if (!id || !viewing(id) || !state.view || state.view.id !== id) return;
  const conv = state.convs.get(id);
  if (!conv) return;
  const readUs = conv.readUs || 0;
  const unseen = state.view.messages.filter((m) => !m.mine && m.from !== ME && m.us > readUs);
  if (!unseen.length && !conv.unread) return;
  const last = unseen.at(-1);
  if (last && conv.kind === "personal") {
    linkFor(id).send(frame("msg_read", conv.ref, last.ts));
  } else if (last && conv.kind === "group") {
    // One read mark to each sender: each of them learns that I have read their messages.
    const latest = new Map();
    for (const m of unseen) latest.set(m.from, m);
    for (const m of latest.values()) linkFor(id).send(frame("grp_msg_read", conv.ref, m.ts, m.from));
  }
  await saveConv(id, (c) => {
    c.unread = 0;
    if (last) c.readUs = Math.max(c.readUs || 0, last.us);
  });
  renderList();
}

/** After a reconnect: what did peers receive and read while this page was away? */
async function refreshReceipts() {
  for (const conv of state.convs.values()) {
    if (!conv.lastOwnUs || conv.note) continue;
    if (conv.kind === "personal" && conv.lastOwnUs > (conv.peerReadUs || 0)) {
      const asOf = Date.now() * 1000; // "waiting" counts what was sent before this request
      const r = await api("GET", `/chat/info/personal?msg_to=${conv.ref}`);
      if (!r.ok) continue;
      const out = r.data.outgoing || {};
      const seen = parseTs(out.last_seen_receiver);
      // Server timestamps are to the millisecond: everything up to the end of it.
      if (!Number.isNaN(seen)) {
        const upTo = seen + 999;
        await saveConv(conv.id, (c) => { c.peerReadUs = Math.max(c.peerReadUs || 0, upTo); });
        for (const msg of await state.db.advanceUpTo(conv.id, upTo, "read")) updateBubble(msg);
      }
      if (out.waiting === 0) {
        for (const msg of await state.db.advanceUpTo(conv.id, asOf, "received")) updateBubble(msg);
      }
    } else if (conv.kind === "group") {
      await refreshGroup(conv.ref);
    }
  }
}

// -- server info ----------------------------------------------------------------------------

async function refreshInfo() {
  const r = await api("GET", "/chat/info");
  if (r.status === 401) return location.assign("/login");
  if (!r.ok) return undefined;
  const info = r.data;
  for (const d of info.dialogues || []) {
    if (d.name) state.names.set(d.msg_to, d.name);
    if (!state.convs.has(`p:${d.msg_to}`)) await saveConv(`p:${d.msg_to}`, () => {});
  }
  for (const g of info.groups || []) {
    const id = `g:${g.key}`;
    const known = state.convs.get(id);
    if (!known || known.title !== g.name || known.note) {
      await saveConv(id, (c) => { c.title = g.name; c.note = null; });
      state.refused.delete(id);
      if (state.links.get(id)?.stopped) state.links.delete(id);
    }
  }
  state.rooms = info.rooms || [];
  for (const c of info.contacts || []) state.contacts.set(c.phone, c);
  renderList();
  if (state.open) renderHeader();
  return undefined;
}

function refreshInfoSoon() {
  clearTimeout(refreshInfoSoon.timer);
  refreshInfoSoon.timer = setTimeout(refreshInfo, 300);
}

async function refreshContacts() {
  const r = await api("GET", "/chat/info/contacts");
  if (!r.ok) return;
  state.contacts = new Map(r.data.contacts.map((c) => [c.phone, c]));
  for (const c of r.data.contacts) {
    state.presence.set(c.phone, {online: c.online,
                                 lastSeenUs: c.last_seen ? parseTs(c.last_seen) : undefined});
  }
  state.blocked = new Set(r.data.blocked || []);
  renderList();
  if (state.open) renderHeader();
  if ($("dlg-contacts").open) renderContacts();
}

async function refreshGroup(key) {
  const r = await api("GET", `/chat/info/group?key=${encodeURIComponent(key)}`);
  const id = `g:${key}`;
  if (r.status === 403 || r.status === 404) {
    if (state.convs.has(id)) await saveConv(id, (c) => { c.note = "You are no longer in this group."; });
    return;
  }
  if (!r.ok) return;
  const g = r.data;
  for (const [phone, name] of Object.entries(g.names || {})) state.names.set(phone, name);
  await saveConv(id, (c) => {
    c.title = g.name;
    c.participants = g.participants;
    c.admins = g.admins;
    c.readPos = c.readPos || {};
    for (const [phone, last] of Object.entries(g.read || {})) {
      const us = parseTs(last);
      if (!Number.isNaN(us)) c.readPos[phone] = Math.max(c.readPos[phone] || 0, us + 999);
    }
  });
  renderList();
  if (state.open === id) {
    renderHeader();
    refreshOwnBubbles(id);
  }
}

// -- opening and closing conversations ------------------------------------------------------

function keepDraft() {
  if (state.open) state.drafts.set(state.open, $("text").value);
  clearTimeout(state.typingTimer);
  state.typingTimer = null;
}

async function openConv(id, {push = true} = {}) {
  const conv = state.convs.get(id) || await saveConv(id, () => {});
  if (conv.left) await saveConv(id, (c) => { c.left = false; });
  keepDraft();
  state.open = id;
  $("text").value = state.drafts.get(id) || "";
  autosize();
  const messages = await state.db.page(id, Infinity, PAGE);
  state.view = {id, messages, nodes: new Map(), hasMore: messages.length === PAGE, loading: false};
  $("app").dataset.view = "conv";
  $("placeholder").hidden = true;
  $("conv-head").hidden = false;
  $("scroller").hidden = false;
  renderHeader();
  renderConvState();
  renderMessages("bottom");
  renderList();
  if (push && location.pathname !== convUrl(conv)) history.pushState({id}, "", convUrl(conv));
  if (!state.refused.has(id)) linkFor(id).wake();
  if (conv.kind === "group") refreshGroup(conv.ref);
  await fillUp();
  markRead(id);
  if (!matchMedia("(pointer: coarse)").matches) $("text").focus();
}

function closeConv({push = true} = {}) {
  keepDraft();
  state.open = null;
  state.view = null;
  $("app").dataset.view = "list";
  $("placeholder").hidden = false;
  $("conv-head").hidden = true;
  $("scroller").hidden = true;
  $("compose").hidden = true;
  $("conv-note").hidden = true;
  $("messages").replaceChildren();
  renderList();
  if (push && location.pathname !== "/chat") history.pushState({}, "", "/chat");
  const current = document.querySelector(".conv[aria-current='true']") ||
    document.querySelector(".conv");
  current?.focus();
}

function routeFromPath(path) {
  let m = path.match(/^\/chat\/personal\/[0-9]+\/([0-9]{10,15})\/$/);
  if (m) return `p:${m[1]}`;
  m = path.match(/^\/chat\/group\/[0-9]+\/([A-Za-z0-9]{10})\/$/);
  if (m) return `g:${m[1]}`;
  m = path.match(/^\/chat\/room\/([A-Za-z0-9_-]{1,64})\/$/);
  if (m) return `r:${m[1]}`;
  return null;
}

async function route(push) {
  const id = routeFromPath(location.pathname);
  if (!id) return closeConv({push: false});
  if (id[0] === "r") {
    const conv = state.convs.get(id);
    if (!conv || conv.left) return joinRoomFromUrl(id.slice(2));
  }
  return openConv(id, {push});
}

async function joinRoomFromUrl(name) {
  const r = await api("GET", `/chat/info/room?room_name=${encodeURIComponent(name)}`);
  if (!r.ok) return toast(r.data.error);
  await saveConv(`r:${name}`, (c) => { c.left = false; });
  linkFor(`r:${name}`).wake();
  return openConv(`r:${name}`, {push: false});
}

// -- rendering: the conversation list -------------------------------------------------------

function previewOf(conv) {
  const t = state.typing.get(conv.id);
  if (t) return {text: conv.kind === "personal" ? "typing…" : `${nameOf(t.who)} is typing…`,
                 typing: true};
  if (conv.note && conv.note !== "locked") return {text: conv.note};
  if (!conv.lastUs) return {text: conv.kind === "room" ? "Room" : "No messages yet"};
  let prefix = "";
  if (conv.lastFrom === ME && conv.ref !== ME) prefix = "You: ";
  else if (conv.kind !== "personal") prefix = `${nameOf(conv.lastFrom)}: `;
  return {text: prefix + conv.lastText.replace(/\s+/g, " ")};
}

function sortedConvs() {
  return [...state.convs.values()]
    .filter((c) => !c.left)
    .sort((a, b) => (b.lastUs || 0) - (a.lastUs || 0) ||
          titleOf(a).localeCompare(titleOf(b)));
}

function renderList() {
  const list = $("conversations");
  const focused = document.activeElement?.closest?.(".conv")?.dataset.id;
  const rows = [];
  let unreadTotal = 0;
  for (const conv of sortedConvs()) {
    const title = titleOf(conv);
    const preview = previewOf(conv);
    const unread = conv.unread || 0;
    unreadTotal += unread;
    const av = avatar(title, conv.id, conv.kind);
    if (conv.kind === "personal" && state.presence.get(conv.ref)?.online) {
      av.append(el("span", {class: "dot", attrs: {title: "online"}}));
    }
    const button = el("button", {
      class: `conv${unread ? " has-unread" : ""}`,
      attrs: {type: "button", "aria-current": state.open === conv.id ? "true" : "false",
              "aria-label": `${title}${unread ? `, ${unread} unread` : ""}`},
      data: {id: conv.id},
      on: {click: () => openConv(conv.id)},
    },
    av,
    el("span", {class: "conv-main"},
       el("span", {class: "conv-top"},
          el("span", {class: "conv-title ellipsis", text: title}),
          conv.lastUs ? el("time", {class: "conv-time", text: ageLabel(conv.lastUs),
                                    data: {us: String(conv.lastUs)}}) : null),
       el("span", {class: "conv-bottom"},
          el("span", {class: `conv-last ellipsis${preview.typing ? " typing" : ""}`,
                      text: preview.text}),
          unread ? el("span", {class: "badge", text: unread > 99 ? "99+" : String(unread)}) : null)));
    rows.push(el("li", {}, button));
  }
  list.replaceChildren(...rows);
  $("empty-list").hidden = rows.length > 0;
  document.title = unreadTotal ? `(${unreadTotal}) Chat` : "Chat";
  if (focused) list.querySelector(`.conv[data-id="${CSS.escape(focused)}"]`)?.focus();
}

// -- rendering: the open conversation -------------------------------------------------------

function renderHeader() {
  const conv = state.convs.get(state.open);
  if (!conv) return;
  const title = titleOf(conv);
  $("conv-title").textContent = title;
  $("conv-avatar").replaceChildren(avatar(title, conv.id, conv.kind));
  const sub = $("conv-sub");
  const t = state.typing.get(conv.id);
  sub.classList.toggle("typing", !!t);
  if (t) {
    sub.textContent = conv.kind === "personal" ? "typing…" : `${nameOf(t.who)} is typing…`;
  } else if (conv.kind === "personal") {
    const p = state.presence.get(conv.ref);
    const parts = [];
    if (title !== conv.ref && conv.ref !== ME) parts.push(conv.ref);
    if (p?.online) parts.push("online");
    else if (p?.lastSeenUs) parts.push(lastSeenLabel(p.lastSeenUs));
    if (state.blocked.has(conv.ref)) parts.push("blocked");
    sub.textContent = parts.join(" · ");
  } else if (conv.kind === "group") {
    const n = (conv.participants || []).length;
    sub.textContent = n ? `${n} members` : "group";
  } else {
    sub.textContent = "public room";
  }
}

function renderConvState() {
  const conv = state.convs.get(state.open);
  if (!conv) return;
  const note = $("conv-note");
  const locked = conv.note === "locked";
  const blocked = conv.kind === "personal" && state.blocked.has(conv.ref);
  note.replaceChildren();
  if (locked) {
    const input = el("input", {attrs: {type: "password", "aria-label": "Room password",
                                       placeholder: "Room password"}});
    const form = el("form", {class: "inline-form row", on: {submit: (ev) => {
      ev.preventDefault();
      joinRoom(conv.ref, input.value);
    }}}, input, el("button", {class: "btn primary", text: "Enter", attrs: {type: "submit"}}));
    note.append(el("span", {text: "This room is private: give its password."}), form);
  } else if (conv.note) {
    note.textContent = conv.note;
  } else if (blocked) {
    note.textContent = "You have blocked this person: their messages do not reach you.";
  }
  note.hidden = !note.childNodes.length;
  $("compose").hidden = !!conv.note;
}

function insertIntoView(msg) {
  const list = state.view.messages;
  let i = list.length;
  while (i > 0 && list[i - 1].us > msg.us) i -= 1;
  if (list[i - 1]?.id === msg.id) list[i - 1] = msg; else list.splice(i, 0, msg);
}

/** The state shown on an own message: a group's counts come from receipts and read marks. */
function shownState(msg, conv) {
  if (conv.kind !== "group" || msg.state === "pending" || msg.state === "failed") {
    return {state: msg.state};
  }
  const people = others(conv);
  const n = people.length;
  const read = people.filter((p) => (conv.readPos?.[p] || 0) >= msg.us).length;
  const got = people.filter((p) => (msg.rcv || []).includes(p) ||
                                   (conv.readPos?.[p] || 0) >= msg.us).length;
  const s = n && read === n ? "read" : n && got === n ? "received" : msg.state === "read" ? "received" : msg.state;
  return {state: s, readBy: n ? `read by ${read} of ${n}` : null};
}

const STATE_LABEL = {pending: "waiting to be sent", sent: "sent", received: "delivered",
                     read: "read", failed: "not sent"};

function bubble(msg, prev, conv) {
  const mine = !!msg.mine || msg.from === ME;
  const firstOfRun = !prev || prev.from !== msg.from || dayKey(prev.us) !== dayKey(msg.us) ||
    msg.us - prev.us > 5 * 60 * 1_000_000;
  const li = el("li", {
    class: `msg ${mine ? "mine" : "theirs"}${firstOfRun ? " first" : ""}`,
    data: {id: msg.id, from: msg.from, us: String(msg.us)},
  });
  const box = el("div", {class: "bubble"});
  if (!mine && conv.kind !== "personal" && firstOfRun) {
    const sender = el("span", {class: "sender", text: nameOf(msg.from)});
    sender.style.setProperty("--hue", String(hueOf(msg.from)));
    box.append(sender);
  }
  box.append(el("p", {class: "body", text: msg.body}));
  const meta = el("span", {class: "meta"},
                  el("time", {text: ageLabel(msg.us), data: {us: String(msg.us)},
                              attrs: {title: fullLabel(msg.us), datetime: new Date(msg.us / 1000).toISOString()}}));
  if (mine && conv.kind !== "room") {
    const shown = shownState(msg, conv);
    li.dataset.state = shown.state;
    const name = {pending: "clock", failed: "alert", sent: "tick"}[shown.state] || "ticks";
    const ticks = el("span", {class: `ticks ${shown.state}`, attrs: {role: "img",
                              "aria-label": STATE_LABEL[shown.state], title: STATE_LABEL[shown.state]}},
                     icon(name));
    if (shown.readBy) meta.prepend(el("span", {class: "readby", text: shown.readBy}));
    meta.append(ticks);
  } else if (mine) {
    li.dataset.state = msg.state;
    if (msg.state === "pending") meta.append(el("span", {class: "ticks pending", attrs: {role: "img",
      "aria-label": STATE_LABEL.pending}}, icon("clock")));
    if (msg.state === "failed") meta.append(el("span", {class: "ticks failed"}, icon("alert")));
  }
  box.append(meta);
  li.append(box);
  if (mine && msg.state === "failed") {
    li.append(el("div", {class: "failed-note"},
      el("span", {text: `Not sent: ${msg.error || "refused"}`}),
      el("button", {class: "link-btn", text: "Retry", attrs: {type: "button"},
                    on: {click: () => retry(msg)}}),
      el("button", {class: "link-btn", text: "Delete", attrs: {type: "button"},
                    on: {click: () => discard(msg)}})));
  }
  return li;
}

function hueOf(text) {
  return hash(`p:${text}`) % 360; // the same colour as the sender's avatar
}

/**
 * Rebuild the list from view.messages, reusing bubbles. `mode`: "bottom" scrolls to the end;
 * "prepend" keeps what is on screen in place (older history above); "append" follows the end
 * only when the reader was already there.
 */
function renderMessages(mode) {
  const view = state.view;
  const conv = state.convs.get(view.id);
  const scroller = $("scroller");
  const fromBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight;
  const nodes = [];
  let prev = null;
  const keep = new Map();
  for (const msg of view.messages) {
    if (!prev || dayKey(prev.us) !== dayKey(msg.us)) {
      nodes.push(el("li", {class: "day", attrs: {role: "separator"}},
                    el("span", {text: dayLabel(msg.us)})));
    }
    const key = bubbleKey(msg, prev);
    let node = view.nodes.get(msg.id);
    if (!node || node.dataset.key !== key) {
      node = bubble(msg, prev, conv);
      node.dataset.key = key;
    }
    keep.set(msg.id, node);
    nodes.push(node);
    prev = msg;
  }
  view.nodes = keep;
  $("messages").replaceChildren(...nodes);
  $("history-top").hidden = view.hasMore || !view.messages.length;
  const lastMine = view.messages.at(-1)?.mine;
  if (mode === "bottom" || (mode === "append" && (fromBottom < 80 || lastMine))) {
    scroller.scrollTop = scroller.scrollHeight;
  } else if (mode === "prepend") {
    scroller.scrollTop = scroller.scrollHeight - scroller.clientHeight - fromBottom;
  }
}

/** What a bubble's looks depend on, besides the conversation: reuse it while this is the same. */
function bubbleKey(msg, prev) {
  return `${msg.id}|${prev?.id || ""}|${msg.state || ""}|${(msg.rcv || []).length}`;
}

function updateBubble(msg) {
  notify(msg.conv);
  const view = state.view;
  if (!view || view.id !== msg.conv) return;
  const i = view.messages.findIndex((m) => m.id === msg.id);
  if (i < 0) return;
  view.messages[i] = msg;
  const old = view.nodes.get(msg.id);
  const fresh = bubble(msg, view.messages[i - 1], state.convs.get(view.id));
  fresh.dataset.key = bubbleKey(msg, view.messages[i - 1]);
  view.nodes.set(msg.id, fresh);
  old?.replaceWith(fresh);
}

function refreshOwnBubbles(id) {
  if (!state.view || state.view.id !== id) return;
  for (const msg of state.view.messages) if (msg.mine) updateBubble(msg);
}

async function loadOlder() {
  const view = state.view;
  if (!view || view.loading || !view.hasMore) return;
  view.loading = true;
  const oldest = view.messages[0]?.us ?? Infinity;
  const older = await state.db.page(view.id, oldest, PAGE);
  if (state.view !== view) return;
  view.hasMore = older.length === PAGE;
  view.messages.unshift(...older);
  renderMessages("prepend");
  view.loading = false;
}

/** Load older pages until the screen is full (or the history ends). */
async function fillUp() {
  const scroller = $("scroller");
  while (state.view?.hasMore && scroller.scrollHeight <= scroller.clientHeight + 40) {
    await loadOlder();
  }
}

// -- sending --------------------------------------------------------------------------------

async function send(body) {
  const id = state.open;
  const conv = state.convs.get(id);
  if (!conv || conv.note) return;
  const {us, ts} = newStamp(ME);
  const {record, conv: saved} = await state.db.addOwn({conv: id, from: ME, us, ts, body});
  merge(saved);
  notify(id);
  pendingConvs.add(id);
  if (state.view?.id === id) {
    insertIntoView(record);
    renderMessages("append");
  }
  renderList();
  flush(id);
}

async function retry(msg) {
  const again = await state.db.setState(msg.conv, ME, msg.us, "pending", {error: null});
  if (again) updateBubble(again);
  pendingConvs.add(msg.conv);
  flush(msg.conv);
}

async function discard(msg) {
  await state.db.deleteOwn(msg.conv, ME, msg.us);
  if (state.view?.id === msg.conv) {
    state.view.messages = state.view.messages.filter((m) => m.id !== msg.id);
    renderMessages("update");
  }
}

function sendTyping() {
  const conv = state.convs.get(state.open);
  if (!conv || conv.note) return;
  const now = Date.now();
  const wait = state.lastTypingSent + TYPING_SENT_EVERY_MS - now;
  if (wait > 0) {
    // Too soon after the last one: send it at the end of the interval if typing goes on.
    state.typingTimer ??= setTimeout(() => {
      state.typingTimer = null;
      if ($("text").value) sendTyping();
    }, wait);
    return;
  }
  const command = {personal: "is_typing", group: "is_grp_typing", room: "is_room_typing"}[conv.kind];
  if (linkFor(conv.id).trySend(frame(command, conv.ref, ""))) state.lastTypingSent = now;
}

// -- dialogs --------------------------------------------------------------------------------

function knownPeople() {
  const phones = new Set(state.contacts.keys());
  for (const c of state.convs.values()) if (c.kind === "personal") phones.add(c.ref);
  phones.delete(ME);
  return [...phones].filter((p) => !state.blocked.has(p))
    .sort((a, b) => nameOf(a).localeCompare(nameOf(b)));
}

function openGroupDialog() {
  const people = knownPeople();
  $("group-people").replaceChildren(...people.map((phone) => el("li", {},
    el("label", {class: "pick"},
       el("input", {attrs: {type: "checkbox", value: phone, name: "participant"}}),
       avatar(nameOf(phone), `p:${phone}`),
       el("span", {class: "pick-text"}, el("span", {text: nameOf(phone)}),
          el("span", {class: "muted", text: phone}))))));
  $("group-people-empty").hidden = people.length > 0;
  $("group-form").reset();
  $("dlg-group").showModal();
}

async function createGroup(ev) {
  ev.preventDefault();
  const name = $("group-name").value.trim();
  const picked = [...$("group-people").querySelectorAll("input:checked")].map((i) => i.value);
  const typed = $("group-phones").value.split(/[\s,;]+/).filter(Boolean);
  const bad = typed.find((p) => !PHONE_RE.test(p));
  if (bad) return toast(`${bad} is not a phone number (10 to 15 digits)`);
  const participants = [...new Set([...picked, ...typed])];
  if (!name) return toast("Give the group a title");
  const r = await api("POST", "/chat/special/group", {name, participants});
  if (!r.ok) return toast(r.data.error);
  $("dlg-group").close();
  const g = r.data;
  await saveConv(`g:${g.key}`, (c) => {
    c.title = g.name;
    c.participants = g.participants;
    c.admins = g.admins;
  });
  return openConv(`g:${g.key}`);
}

async function openRoomsDialog() {
  await refreshInfo();
  renderRooms();
  $("room-form").reset();
  $("dlg-rooms").showModal();
}

function renderRooms() {
  const items = state.rooms.map((room) => {
    const id = `r:${room.room_name}`;
    const joined = state.convs.has(id) && !state.convs.get(id).left;
    const pw = el("input", {attrs: {type: "password", placeholder: "password",
                                    "aria-label": `Password of ${room.room_name}`}});
    const action = el("button", {
      class: "btn", text: joined ? "Open" : "Join", attrs: {type: "button"},
      on: {click: async () => {
        $("dlg-rooms").close();
        if (joined) return openConv(id);
        return joinRoom(room.room_name, room.private ? pw.value : undefined);
      }},
    });
    return el("li", {class: "pick"},
              avatar(room.room_name, id, "room"),
              el("span", {class: "pick-text"},
                 el("span", {text: `#${room.room_name}`}),
                 el("span", {class: "muted", text: room.private ? "private" : "public"})),
              room.private && !joined ? pw : null, action);
  });
  $("room-list").replaceChildren(...items);
  $("room-list-empty").hidden = items.length > 0;
}

async function createRoom(ev) {
  ev.preventDefault();
  const name = $("room-name").value.trim();
  const password = $("room-password").value;
  const body = {room_name: name};
  if (password) body.password = password;
  const r = await api("POST", "/chat/special/room", body);
  if (!r.ok) return toast(r.data.error);
  $("dlg-rooms").close();
  return joinRoom(name);
}

async function openContactsDialog() {
  $("contact-form").reset();
  renderContacts();
  $("dlg-contacts").showModal();
  refreshContacts();
}

function presenceText(phone) {
  const p = state.presence.get(phone);
  if (p?.online) return "online";
  if (p?.lastSeenUs) return lastSeenLabel(p.lastSeenUs);
  return "";
}

function renderContacts() {
  const items = [...state.contacts.values()].map((c) => el("li", {class: "pick"},
    avatar(c.name, `p:${c.phone}`),
    el("span", {class: "pick-text"}, el("span", {text: c.name}),
       el("span", {class: "muted", text: [c.phone, presenceText(c.phone)].filter(Boolean).join(" · ")})),
    el("button", {class: "btn", text: "Message", attrs: {type: "button"}, on: {click: () => {
      $("dlg-contacts").close();
      startDialogue(c.phone);
    }}}),
    el("button", {class: "btn", text: "Remove", attrs: {type: "button",
                                                        "aria-label": `Remove ${c.name}`},
                  on: {click: () => removeContact(c.phone)}}),
    el("button", {class: "btn danger", text: "Block", attrs: {type: "button",
                                                              "aria-label": `Block ${c.name}`},
                  on: {click: () => block(c.phone)}})));
  $("contact-list").replaceChildren(...items);
  $("contact-list-empty").hidden = items.length > 0;
  const blocked = [...state.blocked].map((phone) => el("li", {class: "pick"},
    avatar(nameOf(phone), `p:${phone}`),
    el("span", {class: "pick-text"}, el("span", {text: nameOf(phone)}),
       el("span", {class: "muted", text: phone})),
    el("button", {class: "btn", text: "Unblock", attrs: {type: "button",
                                                         "aria-label": `Unblock ${nameOf(phone)}`},
                  on: {click: () => unblock(phone)}})));
  $("blocked-list").replaceChildren(...blocked);
  $("blocked-list-empty").hidden = blocked.length > 0;
}

async function addContact(phone, name) {
  if (!PHONE_RE.test(phone)) return toast("A phone number is 10 to 15 digits");
  const r = await api("POST", "/chat/special/contact", {phone, name});
  if (!r.ok) return toast(r.status === 404 ? "No account has this phone number" : r.data.error);
  await refreshContacts();
  return undefined;
}

async function removeContact(phone) {
  const r = await api("DELETE", `/chat/special/contact?phone=${phone}`);
  if (!r.ok) return toast(r.data.error);
  return refreshContacts();
}

async function block(phone) {
  const r = await api("POST", "/chat/special/block", {phone});
  if (!r.ok) return toast(r.data.error);
  await refreshContacts();
  if (state.open) renderConvState();
  return undefined;
}

async function unblock(phone) {
  const r = await api("DELETE", `/chat/special/block?phone=${phone}`);
  if (!r.ok) return toast(r.data.error);
  await refreshContacts();
  if (state.open) renderConvState();
  return undefined;
}

function openInfoDialog() {
  const conv = state.convs.get(state.open);
  if (!conv) return;
  $("dlg-info-title").textContent = titleOf(conv);
  const body = $("info-body");
  body.replaceChildren();
  if (conv.kind === "personal") {
    const contact = state.contacts.get(conv.ref);
    const nameInput = el("input", {attrs: {maxlength: "64", required: true,
                                           value: contact?.name || state.names.get(conv.ref) || ""}});
    body.append(
      el("p", {class: "muted", text: [conv.ref, presenceText(conv.ref)].filter(Boolean).join(" · ")}),
      el("form", {class: "inline-form", on: {submit: async (ev) => {
        ev.preventDefault();
        await addContact(conv.ref, nameInput.value.trim());
        renderHeader();
        renderList();
        openInfoDialog();
      }}}, el("label", {text: contact ? "Contact name " : "Save as contact, name "}, nameInput),
         el("button", {class: "btn primary", text: contact ? "Rename" : "Add to contacts",
                       attrs: {type: "submit"}})));
    if (conv.ref !== ME) {
      const blocked = state.blocked.has(conv.ref);
      body.append(el("p", {}, el("button", {
        class: `btn${blocked ? "" : " danger"}`, text: blocked ? "Unblock" : "Block",
        attrs: {type: "button"},
        on: {click: async () => { await (blocked ? unblock : block)(conv.ref); openInfoDialog(); }},
      })));
    }
  } else if (conv.kind === "group") {
    const admin = (conv.admins || []).includes(ME);
    const members = (conv.participants || []).map((p) => el("li", {class: "pick"},
      avatar(nameOf(p), `p:${p}`),
      el("span", {class: "pick-text"}, el("span", {text: p === ME ? `${MY_NAME} (you)` : nameOf(p)}),
         el("span", {class: "muted", text: (conv.admins || []).includes(p) ? `${p} · admin` : p})),
      admin && p !== ME ? el("button", {class: "btn", text: "Remove", attrs: {type: "button"},
        on: {click: () => patchGroup(conv, {remove: [p]})}}) : null));
    body.append(el("ul", {class: "pick-list"}, ...members));
    if (admin) {
      const add = el("input", {attrs: {inputmode: "numeric", placeholder: "phone number",
                                       "aria-label": "Phone number to add"}});
      body.append(el("form", {class: "inline-form row", on: {submit: (ev) => {
        ev.preventDefault();
        if (!PHONE_RE.test(add.value.trim())) return toast("A phone number is 10 to 15 digits");
        return patchGroup(conv, {add: [add.value.trim()]});
      }}}, add, el("button", {class: "btn primary", text: "Add", attrs: {type: "submit"}})));
    }
    body.append(el("p", {}, el("button", {class: "btn danger", text: "Leave group",
      attrs: {type: "button"}, on: {click: () => leaveGroup(conv)}})));
  } else {
    body.append(el("p", {class: "muted", text: "Public rooms keep their latest messages on the server; " +
                                              "this device keeps everything it has seen."}),
                el("p", {}, el("button", {class: "btn danger", text: "Leave room",
                  attrs: {type: "button"}, on: {click: () => leaveRoom(conv)}})));
  }
  if (!$("dlg-info").open) $("dlg-info").showModal();
}

async function patchGroup(conv, change) {
  const r = await api("PATCH", `/chat/info/group?key=${conv.ref}`, change);
  if (!r.ok) return toast(r.data.error);
  await refreshGroup(conv.ref);
  return openInfoDialog();
}

async function leaveGroup(conv) {
  const r = await api("PATCH", `/chat/info/group?key=${conv.ref}`, {remove: [ME]});
  if (!r.ok) return toast(r.data.error);
  $("dlg-info").close();
  state.refused.add(conv.id);
  state.links.get(conv.id)?.stop();
  await saveConv(conv.id, (c) => { c.note = "You left this group."; });
  notify(conv.id);
  renderConvState();
  renderList();
  return undefined;
}

async function leaveRoom(conv) {
  $("dlg-info").close();
  state.links.get(conv.id)?.stop();
  state.links.delete(conv.id);
  await saveConv(conv.id, (c) => { c.left = true; });
  closeConv();
}

async function startDialogue(phone) {
  if (!PHONE_RE.test(phone)) return toast("A phone number is 10 to 15 digits");
  const r = await api("POST", "/chat/special/personal", {msg_to: phone});
  if (!r.ok) return toast(r.status === 404 ? "No account has this phone number" : r.data.error);
  await saveConv(`p:${phone}`, () => {});
  refreshInfoSoon();
  return openConv(`p:${phone}`);
}

// -- wiring ---------------------------------------------------------------------------------

function bind() {
  hydrateIcons();
  $("me-avatar").replaceWith(avatar(MY_NAME, `p:${ME}`));
  $("open-dialogue").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $("peer");
    startDialogue(input.value.trim()).then(() => { input.value = ""; });
  });
  $("compose").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("text");
    const body = text.value;
    if (!body.trim()) return;
    text.value = "";
    autosize();
    send(body);
  });
  $("text").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      $("compose").requestSubmit();
    } else if (ev.key === "Escape" && $("app").dataset.view === "conv") {
      closeConv();
    }
  });
  $("text").addEventListener("input", () => {
    autosize();
    if ($("text").value) sendTyping();
  });
  $("back").addEventListener("click", () => closeConv());
  $("conv-info").addEventListener("click", openInfoDialog);
  $("scroller").addEventListener("scroll", () => {
    if ($("scroller").scrollTop < 200) loadOlder();
  }, {passive: true});
  $("reconnect").addEventListener("click", () => state.receive.wake());
  $("new-group").addEventListener("click", openGroupDialog);
  $("group-form").addEventListener("submit", createGroup);
  $("show-rooms").addEventListener("click", openRoomsDialog);
  $("room-form").addEventListener("submit", createRoom);
  $("show-contacts").addEventListener("click", openContactsDialog);
  $("contact-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    await addContact($("contact-phone").value.trim(), $("contact-name").value.trim());
    $("contact-form").reset();
  });
  for (const button of document.querySelectorAll("dialog [data-close]")) {
    button.addEventListener("click", () => button.closest("dialog").close());
  }
  // Up and Down move between conversations in the list.
  $("conversations").addEventListener("keydown", (ev) => {
    if (ev.key !== "ArrowDown" && ev.key !== "ArrowUp") return;
    const rows = [...$("conversations").querySelectorAll(".conv")];
    const i = rows.indexOf(document.activeElement);
    const next = rows[i + (ev.key === "ArrowDown" ? 1 : -1)];
    if (next) {
      ev.preventDefault();
      next.focus();
    }
  });
  window.addEventListener("popstate", () => route(false));
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState !== "visible") return;
    if (!state.online) state.receive.wake();
    markRead(state.open);
  });
  // The browser knows before a silent TCP connection does: drop the sockets and come back with it.
  window.addEventListener("offline", () => {
    state.receive.drop();
    for (const link of state.links.values()) link.drop();
  });
  window.addEventListener("online", () => {
    state.receive.wake();
    for (const [id, link] of state.links) if (link.wanted() && !state.refused.has(id)) link.wake();
  });
  // Relative times ("just now", "14:05") age: refresh them twice a minute.
  setInterval(() => {
    for (const t of document.querySelectorAll("time[data-us]")) {
      t.textContent = ageLabel(Number(t.dataset.us));
    }
    if (state.open) renderHeader();
  }, 30_000);
}

const growable = CSS.supports("field-sizing", "content");

function autosize() {
  if (growable) return;
  const text = $("text");
  text.style.height = "auto";
  text.style.height = `${Math.min(text.scrollHeight, 160)}px`;
}

async function main() {
  bind();
  if (channel) channel.onmessage = (ev) => { followOtherTab(ev.data.conv).catch(console.error); };
  try {
    state.db = await LocalDb.open(ME);
  } catch (err) {
    $("offline").hidden = false;
    $("offline-text").textContent =
      "This browser does not let the chat keep its history (IndexedDB is unavailable).";
    throw err;
  }
  for (const conv of await state.db.convs()) merge(conv);
  for (const msg of await state.db.pending()) pendingConvs.add(msg.conv);
  for (const conv of state.convs.values()) if (conv.kind === "room" && !conv.left) linkFor(conv.id);
  renderList();
  startReceiving();
  for (const conv of state.convs.values()) if (conv.kind === "room" && !conv.left) linkFor(conv.id).wake();
  const kind = meEl.dataset.openKind;
  const ref = meEl.dataset.openId;
  if (kind && ref) {
    const id = `${kind[0]}:${ref}`;
    if (kind === "room" && (!state.convs.has(id) || state.convs.get(id).left)) await joinRoomFromUrl(ref);
    else await openConv(id, {push: false});
  }
  document.body.classList.add("ready");
}

main();
