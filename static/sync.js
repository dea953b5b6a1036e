// The protocol's flows (SPEC 5, 6), without the DOM: the receive socket, the send and room
// sockets, storing and acknowledging, the outbox, receipts, reads, typing, presence, and the
// server's view of names, contacts and groups. What changes is announced with `emit` (state.js).
// See docs/client.md.

import {cleanAttachments, filesOf, isQuotaError, keepAttachments} from "./attachments.js";
import {LocalDb, messageId} from "./db.js";
import {Link, api, paths} from "./net.js";
import {
  ME, MY_NAME, PHONE_RE, emit, groupSender, merge, nameOf, notify, saveConv, setMyName, state, titleOf,
  viewing,
} from "./state.js";
import {frameRef, readRef, refFields, refId} from "./references.js";
import {newStamp, parseTs} from "./time.js";

const TYPING_SHOWN_MS = 2000;
// The server passes one typing event a second per socket; a little more keeps clear of that edge
// while the other side's indicator (2 s) stays on as long as the typing goes on.
const TYPING_SENT_EVERY_MS = 1500;

let receive = null;              // the receive socket (Link)
const links = new Map();         // conversation id -> Link (send socket, or room socket)
const sentOn = new Map();        // conversation id -> {fifo: [us], set: Set(us)} on the current socket
const flushing = new Map();      // conversation id -> the flush in progress
const refused = new Set();       // conversations whose sockets are refused (left, gone, locked)
const pendingConvs = new Set();  // conversations with own messages not yet stored by the server
let pushes = Promise.resolve();  // frames are handled one at a time, in order
let lastTypingSent = 0;
// A message waiting longer than this (by this device's clock) and never sent goes out with a
// new sent_timestamp: half of the server's default `security.timestamp_skew_seconds` (SPEC 10),
// which leaves room for a device clock a few hours off.
export const RESTAMP_AFTER_US = 12 * 3600 * 1_000_000;
// The server's refusal of a sent_timestamp too far from its clock (chatserver/protocol.py).
const GROUP_KEY_RE = /^[A-Za-z0-9]{10}$/;
const EXPIRED_TEXT = "it waited too long on the server and was deleted there";
const SKEW_RE = /sent_timestamp .*away from the server's clock/i;
// A room socket closed by the server because the room was closed (DELETE /chat/special/room).
const ROOM_CLOSED = 4404;
export const ROOM_CLOSED_NOTE = "This room was closed.";
let typingTimer = null;

// -- start ----------------------------------------------------------------------------------

/** Open this account's history on the device; throws when IndexedDB is unavailable. */
export async function open() {
  state.db = await LocalDb.open(ME);
}

/** Load the conversations and the outbox from the device. */
export async function load() {
  for (const conv of await state.db.convs()) merge(conv);
  for (const msg of await state.db.pending()) pendingConvs.add(msg.conv);
  for (const conv of state.convs.values()) {
    if (conv.kind !== "room" || conv.left) continue;
    // A room closed by its creator (or gone) stays shut after a reload: no socket to try.
    if (conv.note && conv.note !== "locked") refused.add(conv.id);
    linkFor(conv.id);
  }
}

/** Connect the receive socket and the sockets of the joined rooms. */
export function connect() {
  startReceiving();
  for (const conv of state.convs.values()) if (conv.kind === "room" && !conv.left) linkFor(conv.id).wake();
}

/** Queue `fn` behind every frame already being handled. */
function inOrder(fn) {
  pushes = pushes.then(fn).catch((err) => console.error(err));
}

// -- the receive socket ---------------------------------------------------------------------

function startReceiving() {
  receive = new Link(paths.receive(ME), {
    wanted: () => true,
    onOpen: (link) => {
      setOnline(true);
      link.send({command: "fetch_msgs", msg_to: ME});
      link.send({command: "fetch_grp_msgs", msg_to: ME});
      for (const [id, l] of links) if (!refused.has(id) && l.wanted()) l.wake();
      flushAll();
      refreshInfo();
      refreshContacts();
      refreshReceipts();
    },
    // One push at a time, in order: each waits for the database writes of the one before.
    onFrame: (frame) => inOrder(() => onPush(frame)),
    onClose: (link, {opened, code}) => {
      setOnline(false);
      if (!opened || code === 1008) checkSession();
    },
  });
  receive.wake();
}

/** Seconds until the receive socket tries again; 0 while it is connecting. */
export function retryInSeconds() {
  const left = Math.ceil((receive.retryAt - Date.now()) / 1000);
  return receive.ws || left <= 0 ? 0 : left;
}

/** Reconnect the receive socket now. */
export function reconnect() {
  receive.wake();
}

/** The browser says the network is gone: drop the sockets, they come back with it. */
export function networkDown() {
  receive.drop();
  for (const link of links.values()) link.drop();
}

/** The network is back: reconnect the sockets that are wanted. */
export function networkUp() {
  receive.wake();
  for (const [id, link] of links) if (link.wanted() && !refused.has(id)) link.wake();
}

async function checkSession() {
  const {status} = await api("GET", "/chat/info");
  if (status === 401) emit("logged-out");
}

function setOnline(online) {
  state.online = online;
  emit("online", online);
}

async function onPush(f) {
  switch (f.command) {
    case "new_msg": return receiveMessages([f]);
    case "fetch_msgs":
    case "fetch_grp_msgs":
      return receiveMessages(Array.isArray(f.messages) ? f.messages : [], {fetched: true});
    case "msg_received": return onReceipt(f);
    case "msg_read": return onRead(f);
    case "is_typing": return onTyping(f);
    case "presence": return onPresence(f);
    case "group_added": return onGroupAdded(f);
    case "group_event": return onGroupEvent(f);
    case "msg_expired": return onExpired(f);
    case "error": console.warn("server:", f.message); return undefined;
    default: return undefined;
  }
}

/** Store and acknowledge `frames` (pushed, or `fetched`: what waited on the server for this device). */
async function receiveMessages(frames, {fetched = false} = {}) {
  const items = [];
  for (const f of frames) {
    const us = parseTs(f.sent_timestamp);
    if (Number.isNaN(us) || typeof f.message !== "string" || typeof f.msg_from !== "string") continue;
    const atts = cleanAttachments(f.attachments);
    const grp = groupSender(f.msg_from);
    // A copy of what I sent from another device of mine (SPEC 7.2): `msg_from` is me and
    // `msg_to` the peer (a group's copy: "G-<me>"). It joins that conversation as my own message,
    // already stored by the server. A message to myself stays in my own dialogue.
    const copy = grp ? grp.sender === ME
      : f.msg_from === ME && PHONE_RE.test(String(f.msg_to)) && f.msg_to !== ME;
    const conv = grp ? `g:${grp.key}` : `p:${copy ? f.msg_to : f.msg_from}`;
    const from = grp ? grp.sender : f.msg_from;
    const item = withRef({conv, from, us, ts: f.sent_timestamp, body: f.message, grp: !!grp,
                          ...(atts.length ? {atts, files: "fetching"} : {}),
                          ...(copy ? {mine: 1, state: "sent"} : {})}, f);
    if (item) items.push(item);
  }
  if (!items.length) return;
  const {fresh, convs, touched} = await storeThenAcknowledge(items);
  for (const msg of touched) changed(msg);
  afterIncoming(fresh, convs);
  // What waited for this device may have been read on another device of mine meanwhile: that
  // read mark was pushed while this device had no socket (SPEC 7.2), so ask the server where I
  // am (not in the order of the pushes: a request is no frame to wait for).
  if (fetched) for (const conv of convs) if (conv.unread) readPositionOf(conv).catch(console.error);
}

/**
 * The one place where received messages are acknowledged (SPEC 5.1, 5.3, 6): each is committed
 * to this device first, and only then answered msg_received / grp_msg_received — the server
 * deletes what is acknowledged. A message fetched again (its acknowledgement lost) is stored
 * once and acknowledged again.
 *
 * A message with attachments (SPEC 8) is stored at once (shown, its photos from the server
 * meanwhile) but acknowledged only once the bytes of every attachment and thumbnail are in
 * IndexedDB too (`keepThenAcknowledge`): the server deletes them with the message. Those
 * downloads run beside the frames, never holding up the ones behind. When the browser's storage
 * is full (QuotaExceededError), nothing it refused is acknowledged: the server keeps it, the
 * person is told (`storage` event), and it is tried again on "Try again" or the next connection.
 */
async function storeThenAcknowledge(items) {
  let stored;
  try {
    stored = await state.db.storeIncoming(
      items.map(({grp, ...msg}) => msg),
      // Not unread: my own, on screen, or read already on another device of mine (SPEC 7.2).
      (conv, msg) => !msg.mine && msg.from !== ME && !viewing(conv.id) && msg.us > (conv.readUs || 0));
  } catch (err) {
    if (!isQuotaError(err)) throw err;
    setStorageFull(true);
    return {fresh: [], convs: [], touched: []};
  }
  for (const m of items) {
    if (m.atts) keepThenAcknowledge(m);
    else acknowledge(m);
  }
  return stored;
}

function acknowledge(m) {
  const peer = m.conv.slice(2);
  linkFor(m.conv).send(m.grp
    ? frame("grp_msg_received", peer, m.ts, m.from)
    : frame("msg_received", peer, m.ts));
}

const keeping = new Map();   // message id -> its keepThenAcknowledge in progress
const waitingRoom = new Map(); // message id -> item the full storage refused (tried again later)
const KEEP_RETRY_MS = [2000, 5000, 15_000, 30_000, 60_000];

/**
 * Keep item `m`'s attachments on this device, then acknowledge it (`ack`: false for a room's
 * message, which is never acknowledged). Once per message at a time; a network failure tries
 * again with backoff, a full storage waits for `retryStorage`.
 */
function keepThenAcknowledge(m, {ack = true, tries = 0} = {}) {
  const id = messageId(m.conv, m.from, m.us);
  if (keeping.has(id)) return keeping.get(id);
  const job = (async () => {
    const record = await state.db.message(id);
    if (!record) return;
    const result = await keepAttachments(record);
    if (result.full) {
      waitingRoom.set(id, {m, ack});
      state.unkept.add(id);
      setStorageFull(true);
      changed(record);
      return;
    }
    if (result.failed) {
      const wait = KEEP_RETRY_MS[Math.min(tries, KEEP_RETRY_MS.length - 1)];
      setTimeout(() => keepThenAcknowledge(m, {ack, tries: tries + 1}), wait);
      return;
    }
    waitingRoom.delete(id);
    state.unkept.delete(id);
    if (!waitingRoom.size) setStorageFull(false);
    if (ack) acknowledge(m);
    const now = result.kept || result.gone;
    if (now) changed(now);
  })().catch((err) => console.error(err)).finally(() => keeping.delete(id));
  keeping.set(id, job);
  return job;
}

/** The browser's storage is full (or has room again): the views say so. */
function setStorageFull(full) {
  if (state.storageFull === full) return;
  state.storageFull = full;
  emit("storage", full);
}

/** "Try again" after the storage was full: keep and acknowledge what it refused; what waits on
 *  the server for this device comes again too. */
export function retryStorage() {
  setStorageFull(false);
  const waiting = [...waitingRoom.values()];
  waitingRoom.clear();
  for (const {m, ack} of waiting) keepThenAcknowledge(m, {ack});
  receive?.send({command: "fetch_msgs", msg_to: ME});
  receive?.send({command: "fetch_grp_msgs", msg_to: ME});
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
  emit("incoming", fresh);
  emit("list");
}

/**
 * Received item `item` with the reference frame `f` carries (SPEC 13, references.js): a reply's
 * quote, or an edit, unsend or reaction (kept unshown, applied to its original). null for a
 * malformed reference (the server refuses those): acknowledged all the same, never shown.
 */
function withRef(item, f) {
  const ref = readRef(f);
  if (!ref) return item;
  if (ref.bad) {
    if (item.grp !== undefined) acknowledge(item);
    return null;
  }
  // An action carries no attachments of its own to keep.
  const fields = refFields(item, ref);
  if (fields.act) {
    delete item.atts;
    delete item.files;
  }
  return {...item, ...fields};
}

/** A frame on a send or room socket: the five fields of SPEC 5. */
function frame(command, msgTo, message, overrideTo) {
  return {message, command, msg_from: ME, msg_to: overrideTo ?? msgTo,
          sent_timestamp: newStamp(ME).ts};
}

/** One own message changed on the device: other tabs and the views follow. */
function changed(msg) {
  notify(msg.conv);
  emit("message", msg);
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
  if (msg) changed(msg);
}

async function onRead(f) {
  const us = parseTs(f.message);
  if (Number.isNaN(us)) return;
  const grp = groupSender(f.msg_from);
  // I read this on another device of mine (SPEC 7.2: the read mark is pushed to the reader's own
  // sockets too, `msg_from` being me): my unread count follows. It says nothing of what the
  // peer read, so no tick moves — except in the dialogue with myself, where I am the peer.
  if (grp ? grp.sender === ME : f.msg_from === ME) {
    const to = String(f.msg_to);
    if (grp) return readElsewhere(`g:${grp.key}`, us);
    if (!PHONE_RE.test(to)) return undefined;
    await readElsewhere(`p:${to}`, us);
    if (to !== ME) return undefined;
  }
  if (grp) {
    const id = `g:${grp.key}`;
    if (!state.convs.has(id)) return;
    await saveConv(id, (c) => {
      c.readPos = c.readPos || {};
      c.readPos[grp.sender] = Math.max(c.readPos[grp.sender] || 0, us);
    });
    emit("receipts", id);
    return;
  }
  const id = `p:${f.msg_from}`;
  await saveConv(id, (c) => { c.peerReadUs = Math.max(c.peerReadUs || 0, us); });
  for (const msg of await state.db.advanceUpTo(id, us, "read")) changed(msg);
}

/** Where I have read conversation `conv` up to, as the server records it (any of my devices):
 *  its unread count follows. A dialogue: `incoming.last_seen_receiver` of /chat/info/personal;
 *  a group: my entry in /chat/info/group's `read` (refreshGroup). */
async function readPositionOf(conv) {
  if (conv.kind === "group") return refreshGroup(conv.ref);
  if (conv.kind !== "personal") return undefined;
  const r = await api("GET", `/chat/info/personal?msg_to=${encodeURIComponent(conv.ref)}`);
  const seen = r.ok ? parseTs(r.data.incoming?.last_seen_receiver) : NaN;
  // Server timestamps are to the millisecond: everything up to the end of it.
  if (!Number.isNaN(seen)) await readElsewhere(conv.id, seen + 999);
  return undefined;
}

/** Conversation `id` was read up to `us` on another device of mine: clear its unread count. */
async function readElsewhere(id, us) {
  if (!state.convs.has(id)) return;
  const conv = await state.db.readElsewhere(id, ME, us);
  if (!conv) return;
  merge(conv);
  notify(id);
  emit("list");
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
  emit("list");
  emit("header", id);
}

function clearTyping(id) {
  const t = state.typing.get(id);
  if (!t) return;
  clearTimeout(t.timer);
  state.typing.delete(id);
  emit("list");
  emit("header", id);
}

function onPresence(f) {
  const online = f.message === "online";
  const before = state.presence.get(f.msg_from) || {};
  state.presence.set(f.msg_from, {
    online, lastSeenUs: online ? before.lastSeenUs : Date.now() * 1000});
  emit("list");
  emit("header", `p:${f.msg_from}`);
  emit("contacts");
}

/**
 * Someone put me in a group (SPEC 10: announced, not silent): {"command": "group_added",
 * "msg_from": CREATOR, "msg_to": ME, "message": GROUP_KEY}. The group joins the list (from
 * /chat/info), its members' names come with it, and a notice says who added me where.
 */
async function onGroupAdded(f) {
  const key = f.message;
  if (typeof key !== "string" || !GROUP_KEY_RE.test(key) || !PHONE_RE.test(String(f.msg_from))) return;
  newGroups.add(key); // just made: no earlier messages on other devices to point to
  await refreshInfo();
  await refreshGroup(key);
  const conv = state.convs.get(`g:${key}`);
  if (!conv || conv.note) return; // gone again (removed, or the group deleted) before we looked
  emit("notice", `${nameOf(f.msg_from)} added you to ${titleOf(conv)}`);
}

const GROUP_EVENTS = new Set(["added", "removed", "left", "admin", "renamed"]);
// A group keeps its latest events on the device (its system lines), no more.
const MAX_GROUP_EVENTS = 300;

/**
 * A change of a group I am (or was, until this change) in, by PATCH /chat/info/group (pushed,
 * never stored on the server; ISSUE18-API 2): {"command": "group_event", "msg_from": ACTOR,
 * "msg_to": GROUP_KEY, "event": "added"|"removed"|"left"|"admin"|"renamed", "members": [PHONE],
 * "message": the new name or "", "sent_timestamp": the server's time}. It is kept in the group's
 * record (`events`, shown as system lines among the messages), and the group is read again:
 * its members, admins and read positions (read-by counts stay right after someone leaves), or
 * its note when I am no longer in it.
 */
async function onGroupEvent(f) {
  const key = String(f.msg_to);
  const us = parseTs(f.sent_timestamp);
  const members = Array.isArray(f.members) ? f.members.map(String) : null;
  if (!GROUP_KEY_RE.test(key) || !GROUP_EVENTS.has(f.event) || !PHONE_RE.test(String(f.msg_from)) ||
      Number.isNaN(us) || !members || !members.every((p) => PHONE_RE.test(p))) return;
  const id = `g:${key}`;
  // A group this device does not know: only my being added to it makes it one of mine.
  if (!state.convs.has(id) && !(f.event === "added" && members.includes(ME))) return;
  const ev = {us, actor: f.msg_from, event: f.event, members,
              name: f.event === "renamed" && typeof f.message === "string" ? f.message : ""};
  if (f.event === "added" && members.includes(ME)) newGroups.add(key); // new here: not "earlier"
  await saveConv(id, (c) => {
    const events = c.events || [];
    const same = (e) => e.us === ev.us && e.event === ev.event && e.actor === ev.actor;
    if (!events.some(same)) events.push(ev);
    events.sort((a, b) => a.us - b.us);
    c.events = events.slice(-MAX_GROUP_EVENTS);
    if (ev.name) c.title = ev.name;
  });
  emit("events", id);
  emit("list");
  // Not in the order of the pushes: a request is no frame to wait for. The names of new
  // members come with the group: its lines are drawn again.
  refreshGroup(key).then(() => emit("events", id)).catch(console.error);
}

/**
 * An own message waited too long on the server and was deleted there (SPEC 10,
 * `retention.undelivered_days`): {"command": "msg_expired", "message": its sent_timestamp,
 * "msg_from": ME, "msg_to": the recipient or the group key}. Its bubble says so; in a dialogue,
 * Retry sends it again as a new message.
 */
async function onExpired(f) {
  const us = parseTs(f.message);
  const to = String(f.msg_to);
  if (Number.isNaN(us) || f.msg_from !== ME) return;
  const id = PHONE_RE.test(to) ? `p:${to}` : GROUP_KEY_RE.test(to) ? `g:${to}` : null;
  if (!id) return;
  const msg = await state.db.markExpired(id, ME, us, EXPIRED_TEXT);
  if (msg) changed(msg);
}

// -- send sockets and the outbox ------------------------------------------------------------

function linkFor(id) {
  let link = links.get(id);
  if (link && !link.stopped) return link;
  if (link && refused.has(id)) return link; // stays stopped: frames for it are dropped
  const kind = id[0];
  const ref = id.slice(2);
  const path = kind === "p" ? paths.personal(ME, ref)
    : kind === "g" ? paths.group(ME, ref) : paths.room(ref);
  link = new Link(path, {
    wanted: () => !refused.has(id) &&
      (state.open === id || kind === "r" || pendingConvs.has(id)),
    onOpen: () => {
      sentOn.set(id, {fifo: [], set: new Set()});
      flush(id);
    },
    onFrame: (f) => inOrder(() => onLinkFrame(id, f)),
    onClose: (l, {opened, code}) => {
      sentOn.delete(id);
      // Its creator closed the room (SPEC 13): the server deleted it; never reconnect.
      if (kind === "r" && code === ROOM_CLOSED) {
        roomClosed(id).catch(console.error);
        return;
      }
      // Refused at the handshake while the server is up: find out why, once.
      if (!opened && state.online) diagnose(id);
    },
  });
  if (refused.has(id)) link.stop();
  links.set(id, link);
  return link;
}

/** Room `id` was closed by its creator (SPEC 13: its sockets close with 4404, its history is
 *  deleted on the server): its socket stops for good, the conversation says so. The history on
 *  this device stays. */
export async function roomClosed(id) {
  refuse(id);
  state.savedRooms.delete(id.slice(2));
  if (!state.convs.has(id) || state.convs.get(id).note === ROOM_CLOSED_NOTE) return;
  await saveConv(id, (c) => { c.note = ROOM_CLOSED_NOTE; });
  emit("note", id);
  emit("list");
}

/** A saved room (SPEC 13) is in the list: joined here unless it is already, or was closed. */
export async function joinSaved(name) {
  const id = `r:${name}`;
  const known = state.convs.get(id);
  if (known && !known.left) return;
  allow(id);
  await saveConv(id, (c) => {
    c.left = false;
    if (c.note !== "locked") c.note = null;
  });
  wake(id);
}

/** Connect conversation `id`'s socket unless the server refuses it for good. */
export function wake(id) {
  if (!refused.has(id)) linkFor(id).wake();
}

/** Close conversation `id`'s socket (I left the room); joining again opens a new one. */
export function close(id) {
  links.get(id)?.stop();
  links.delete(id);
}

/** Allow conversation `id`'s socket again (rejoined, back in the group). */
export function allow(id) {
  refused.delete(id);
  if (links.get(id)?.stopped) links.delete(id);
}

/** Close conversation `id`'s socket for good (left the group, or the server refuses it). */
export function refuse(id) {
  refused.add(id);
  links.get(id)?.stop();
}

/** Send, in order, every pending message of `id` not yet sent on its current socket. */
function flush(id) {
  const running = flushing.get(id);
  if (running) {
    running.again = true;
    return;
  }
  const job = {again: false};
  flushing.set(id, job);
  (async () => {
    do {
      job.again = false;
      const pending = (await state.db.pending()).filter((m) => m.conv === id);
      if (pending.length) pendingConvs.add(id); else pendingConvs.delete(id);
      const link = linkFor(id);
      if (!link.isOpen) {
        if (pending.length && !refused.has(id)) link.wake();
        break;
      }
      const sent = sentOn.get(id);
      const todo = sent ? pending.filter((m) => !sent.set.has(m.us)) : [];
      if (!todo.length) continue;
      const ready = await readyToSend(id, todo);
      if (sentOn.get(id) !== sent || !link.isOpen) {
        job.again = true; // the socket changed meanwhile: read the outbox again
        continue;
      }
      for (const record of ready) {
        if (sent.set.has(record.us)) continue;
        // Resent after a reconnect with its sent_timestamp (unless re-stamped just now, never
        // sent before): the server stores a retry once, and the recipient's device too.
        if (link.trySend(outgoingFrame(record))) {
          sent.fifo.push(record.us);
          sent.set.add(record.us);
        }
      }
    } while (job.again);
  })().catch((e) => console.error(e)).finally(() => flushing.delete(id));
}

/**
 * The messages `todo` of conversation `id`, marked as tried, those that were written long ago
 * and never sent re-stamped (SPEC 10: the server refuses a sent_timestamp further than
 * `security.timestamp_skew_seconds`, one day by default, from its clock). Re-stamped ones move
 * to the end of the conversation, as the recipient will see them.
 */
async function readyToSend(id, todo) {
  const {ready, conv} = await state.db.prepareSend(id, ME, todo.map((m) => m.us), {
    nowUs: Date.now() * 1000, staleUs: RESTAMP_AFTER_US, stamp: () => newStamp(ME)});
  if (conv) afterRestamp(conv, ready.filter((r) => r.old));
  return ready.map((r) => r.record);
}

/** Own messages got a new sent_timestamp: the views move them, the other tabs follow. */
function afterRestamp(conv, moved) {
  merge(conv);
  notify(conv.id);
  for (const {record, old} of moved) {
    emit("removed", old);
    emit("outgoing", record);
  }
  emit("list");
}

async function flushAll() {
  const pending = await state.db.pending();
  for (const id of new Set(pending.map((m) => m.conv))) {
    pendingConvs.add(id);
    if (!refused.has(id)) flush(id);
  }
}

function outgoingFrame(msg) {
  const ref = msg.conv.slice(2);
  const command = {p: "new_msg", g: "new_grp_msg", r: "room_msg"}[msg.conv[0]];
  // A retry names the same attachments: the server knows the retry and claims nothing again.
  return {message: msg.body, command, msg_from: ME, msg_to: ref, sent_timestamp: msg.ts,
          ...(msg.atts?.length ? {attachments: msg.atts.map((a) => a.id)} : {}), ...frameRef(msg)};
}

async function onLinkFrame(id, f) {
  const sent = sentOn.get(id);
  if (f.command === "msg_sent") {
    const us = parseTs(f.message);
    if (sent) sent.fifo = sent.fifo.filter((x) => x !== us);
    const msg = await state.db.setState(id, ME, us, "sent");
    if (msg) changed(msg);
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

let refetchTimer = null;

/** fetch_msgs and fetch_grp_msgs again in a few seconds (once, however many refusals). */
function refetchSoon() {
  if (refetchTimer) return;
  refetchTimer = setTimeout(() => {
    refetchTimer = null;
    receive?.send({command: "fetch_msgs", msg_to: ME});
    receive?.send({command: "fetch_grp_msgs", msg_to: ME});
  }, 2500);
}

/** A refused frame. The error frame does not say which message it was about; replies come in
 *  order, so for a refused message it is the oldest one still waiting for its reply. */
async function onLinkError(id, f) {
  if (!["new_msg", "new_grp_msg", "room_msg"].includes(f.type)) {
    // Acknowledgements over the server's rate (limits.acks_per_second) deleted nothing: fetch
    // again once the window has passed; what is still stored comes back and is acknowledged.
    if (/received/.test(f.type) && /rate/.test(f.message)) refetchSoon();
    else if (!/received|read|typing/.test(f.type)) emit("notice", f.message);
    return;
  }
  const sent = sentOn.get(id);
  const us = sent?.fifo.shift();
  if (us === undefined) {
    emit("notice", f.message);
    return;
  }
  if (/rate limit|try again/i.test(f.message)) {
    sent.set.delete(us); // not stored: send it again shortly, same sent_timestamp
    setTimeout(() => flush(id), 1500);
    return;
  }
  sent.set.delete(us); // a retry sends it again on this socket
  let error = f.message;
  if (SKEW_RE.test(f.message)) {
    // Refused for its sent_timestamp, nothing stored. A recent one (by this device's clock):
    // the clock is wrong. An old one was kept on purpose, for it may have reached the server
    // before (a lost msg_sent): only the person can decide to send it again as a new message.
    error = Math.abs(Date.now() * 1000 - us) > RESTAMP_AFTER_US
      ? "too old to send with its time; Retry sends it as new (it may have arrived before)"
      : "this device's clock is wrong: set it right, then Retry";
  }
  const msg = await state.db.setState(id, ME, us, "failed", {error});
  if (msg) changed(msg);
  // An edit, unsend or reaction has no bubble of its own to say so (SPEC 13).
  if (msg?.act) emit("notice", `Not done: ${error}`);
  flushDone(id);
}

const diagnosing = new Set();

/** Why does the server refuse this conversation's socket? Stop retrying when it is for good. */
async function diagnose(id) {
  const conv = state.convs.get(id);
  if (!conv || diagnosing.has(id)) return;
  diagnosing.add(id);
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
      refuse(id);
      // A group's note written meanwhile ("You left this group.") stays.
      await saveConv(id, (c) => { if (!(conv.kind === "group" && c.note)) c.note = note; });
      emit("note", id);
    }
  } finally {
    diagnosing.delete(id);
  }
}

// -- rooms ----------------------------------------------------------------------------------

async function onRoomFrames(id, frames, command) {
  const items = [];
  const mine = [];
  for (const f of frames) {
    const us = parseTs(f.sent_timestamp);
    if (Number.isNaN(us) || typeof f.message !== "string") continue;
    const atts = cleanAttachments(f.attachments);
    const item = withRef({conv: id, from: f.msg_from, us, ts: f.sent_timestamp, body: f.message,
                          ...(atts.length ? {atts, files: "fetching"} : {}),
                          ...(f.msg_from === ME ? {mine: 1, state: "sent"} : {})}, f);
    if (f.msg_from === ME) mine.push(us);
    if (item) items.push(item);
  }
  const conv = state.convs.get(id);
  const first = command === "fetch_room_msgs" && conv && !conv.seenHistory;
  // Rooms are not acknowledged: the server keeps their history (SPEC 5.4). Their attachments
  // are kept on the device too, for the server deletes them when they leave the history.
  let stored;
  try {
    stored = await state.db.storeIncoming(items, (c, msg) => !first && !msg.mine && !viewing(c.id));
  } catch (err) {
    if (!isQuotaError(err)) throw err;
    setStorageFull(true);
    return;
  }
  const {fresh, convs, touched} = stored;
  for (const msg of touched) changed(msg);
  for (const m of items) if (m.atts) keepThenAcknowledge(m, {ack: false});
  // The room echoes my own messages: that is their confirmation.
  const sent = sentOn.get(id);
  for (const us of mine) {
    if (sent) sent.fifo = sent.fifo.filter((x) => x !== us);
    const msg = await state.db.setState(id, ME, us, "sent");
    if (msg) changed(msg);
  }
  if (mine.length) flushDone(id);
  if (first) await saveConv(id, (c) => { c.seenHistory = true; });
  afterIncoming(fresh, convs);
}

// -- reading --------------------------------------------------------------------------------

/** `messages` of conversation `id` are on screen: tell their senders, clear the badge. */
export async function markRead(id, messages) {
  const conv = state.convs.get(id);
  if (!conv) return;
  const readUs = conv.readUs || 0;
  const unseen = messages.filter((m) => !m.mine && m.from !== ME && m.us > readUs);
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
  emit("list");
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
        for (const msg of await state.db.advanceUpTo(conv.id, upTo, "read")) changed(msg);
      }
      if (out.waiting === 0) {
        for (const msg of await state.db.advanceUpTo(conv.id, asOf, "received")) changed(msg);
      }
    } else if (conv.kind === "group") {
      await refreshGroup(conv.ref);
    }
  }
}

// -- server info ----------------------------------------------------------------------------

/** Names, dialogues, groups, rooms and contacts from /chat/info (SPEC 4). */
export async function refreshInfo() {
  const r = await api("GET", "/chat/info");
  if (r.status === 401) {
    emit("logged-out");
    return;
  }
  if (!r.ok) return;
  const info = r.data;
  // A conversation the server lists that this device has no record of (a new device, SPEC 7):
  // its earlier messages, if any, are on the other devices ("earlier", shown by the views).
  const fresh = (c) => { if (!c.lastUs) c.earlier = true; };
  for (const d of info.dialogues || []) {
    if (d.name) state.names.set(d.msg_to, d.name);
    if (!state.convs.has(`p:${d.msg_to}`)) await saveConv(`p:${d.msg_to}`, fresh);
  }
  const listed = new Set((info.groups || []).map((g) => g.key));
  for (const conv of state.convs.values()) {
    // A group I left (or was removed from) on another device, or while this one was away: the
    // server says which, and refreshGroup marks it.
    if (conv.kind === "group" && !conv.note && !listed.has(conv.ref)) refreshGroup(conv.ref);
  }
  for (const g of info.groups || []) {
    const id = `g:${g.key}`;
    const known = state.convs.get(id);
    if (!known || known.title !== g.name || known.note) {
      await saveConv(id, (c) => {
        if (!known && !newGroups.has(g.key)) fresh(c);
        c.title = g.name;
        c.note = null;
      });
      allow(id);
      if (known?.note) emit("note", id); // back in it (added again): it can be written to
    }
  }
  state.rooms = info.rooms || [];
  for (const room of state.rooms) {
    // My own rooms are mine on every device: one this device has no record of joins the list
    // (its history comes from the room, SPEC 5.4). One left here keeps its record: it stays left.
    const id = `r:${room.room_name}`;
    if (room.created_by !== ME || state.convs.has(id)) continue;
    await saveConv(id, (c) => { c.left = false; });
    wake(id);
  }
  // Saved rooms (SPEC 13) are in the list on every device; a room left here was unsaved then.
  if (Array.isArray(info.saved_rooms)) {
    state.savedRooms = new Set(info.saved_rooms.map(String));
    for (const name of state.savedRooms) await joinSaved(name);
  }
  for (const c of info.contacts || []) state.contacts.set(c.phone, c);
  setAccountInfo(info);
  emit("list");
  emit("header", null);
}

/**
 * What the server says of my account ({name?, admin?, hide_presence?}, from /chat/info or
 * PATCH /chat/account, SPEC 10): kept in the state, announced with "account" when it changed.
 */
export function setAccountInfo(info) {
  let changed = false;
  if (typeof info.name === "string" && info.name !== MY_NAME) {
    setMyName(info.name);
    changed = true;
  }
  if (typeof info.admin === "boolean" && info.admin !== state.admin) {
    state.admin = info.admin;
    changed = true;
  }
  if (typeof info.hide_presence === "boolean" && info.hide_presence !== state.hidePresence) {
    state.hidePresence = info.hide_presence;
    changed = true;
  }
  if (changed) emit("account");
}

/** The account is gone (deleted), or the person logs out and removes this device's history:
 *  close the sockets and delete the history (the IndexedDB database) and this account's
 *  settings in this browser. */
export async function forget({onBlocked} = {}) {
  receive?.stop();
  for (const link of links.values()) link.stop();
  // Waits until the database is really gone (db.js `destroy`; issue 18, defect 9).
  await state.db?.destroy({onBlocked});
  try {
    // This account's settings on this device: chat.<what>.<phone> (lastStamp, hidePresence, shared).
    const mine = [];
    for (let i = 0; i < localStorage.length; i += 1) {
      const key = localStorage.key(i);
      if (key?.startsWith("chat.") && key.endsWith(`.${ME}`)) mine.push(key);
    }
    for (const key of mine) localStorage.removeItem(key);
  } catch { /* storage disabled */ }
}

/** Close every socket (the page is logging out). */
export function stop() {
  receive?.stop();
  for (const link of links.values()) link.stop();
}

// Groups announced by `group_added` on this device: new, so never "earlier" (refreshInfo).
const newGroups = new Set();
let infoTimer = null;

/** refreshInfo in 300 ms, once for a burst of new names. */
export function refreshInfoSoon() {
  clearTimeout(infoTimer);
  infoTimer = setTimeout(refreshInfo, 300);
}

/** Contacts with their presence, and the blocked phones, from /chat/info/contacts. */
export async function refreshContacts() {
  const r = await api("GET", "/chat/info/contacts");
  if (!r.ok) return;
  state.contacts = new Map(r.data.contacts.map((c) => [c.phone, c]));
  for (const c of r.data.contacts) {
    state.presence.set(c.phone, {online: c.online,
                                 lastSeenUs: c.last_seen ? parseTs(c.last_seen) : undefined});
  }
  state.blocked = new Set(r.data.blocked || []);
  emit("list");
  emit("header", null);
  emit("contacts");
}

/** Group `key`'s name, members, admins and read positions from /chat/info/group. */
export async function refreshGroup(key) {
  const r = await api("GET", `/chat/info/group?key=${encodeURIComponent(key)}`);
  const id = `g:${key}`;
  if (r.status === 403 || r.status === 404) {
    if (!state.convs.has(id) || state.convs.get(id).note) return;
    refuse(id);
    // Left here ("You left this group.", written by actions.leaveGroup while this request was
    // on its way, the group_event being pushed before the PATCH answers): that note stays.
    await saveConv(id, (c) => { c.note = c.note || "You are no longer in this group."; });
    emit("note", id);
    emit("list");
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
  // My own entry is where I have read up to on any of my devices.
  const mine = state.convs.get(id).readPos[ME];
  if (mine) await readElsewhere(id, mine);
  emit("list");
  emit("header", id);
  emit("receipts", id);
}

// -- sending --------------------------------------------------------------------------------

/**
 * Write `body` in conversation `id`, with the attachments `uploads` carries (done uploads of
 * attachments.js: {meta, file, thumb}): kept "pending" on the device with their bytes, then sent.
 * Resolves true once kept; false when it could not be (no such conversation, or the browser's
 * storage is full: then a notice says so and nothing is sent).
 */
export async function send(id, body, uploads = [], {replyTo = null} = {}) {
  const conv = state.convs.get(id);
  if (!conv || conv.note) return false;
  const {us, ts} = newStamp(ME);
  const atts = uploads.map((u) => u.meta);
  // A reply quotes its original by identity (SPEC 13 reply_to).
  const quote = replyTo ? {replyTo: {from: replyTo.from, us: replyTo.us, ts: replyTo.ts}} : {};
  let kept;
  try {
    kept = await state.db.addOwn({conv: id, from: ME, us, ts, body, ...(atts.length ? {atts} : {}),
                                  ...quote},
                                 uploads.flatMap(filesOf));
  } catch (err) {
    if (!isQuotaError(err)) throw err;
    emit("notice", "This browser's storage is full: the message was not sent. Free some space and try again.");
    return false;
  }
  const {record, conv: saved} = kept;
  merge(saved);
  notify(id);
  pendingConvs.add(id);
  emit("outgoing", record);
  emit("list");
  flush(id);
  return true;
}

/**
 * Edit ("edit", `body` the new text), unsend ("delete", `body` "") or react to ("react", `body`
 * one emoji, or "" to take mine back) message record `orig` (SPEC 13). Kept "pending" in the
 * outbox and applied on this device at once, then sent as a new message of the conversation
 * that carries edit_of / delete_of / react_to. Edits and unsends are of my own messages only.
 * Resolves true once kept.
 */
export async function act(orig, kind, body) {
  const conv = state.convs.get(orig.conv);
  if (!conv || conv.note || orig.deleted) return false;
  if ((kind === "edit" || kind === "delete") && orig.from !== ME) return false;
  const {us, ts} = newStamp(ME);
  const point = {kind, from: orig.from, us: orig.us, ts: orig.ts};
  const item = {conv: orig.conv, from: ME, us, ts, body};
  let kept;
  try {
    kept = await state.db.addOwnAction({...item, act: point, target: refId(orig.conv, point)});
  } catch (err) {
    if (!isQuotaError(err)) throw err;
    emit("notice", "This browser's storage is full: nothing was sent. Free some space and try again.");
    return false;
  }
  if (kept.orig) changed(kept.orig);
  const saved = await state.db.getConv(orig.conv); // its preview may follow (an edit of the last)
  if (saved) merge(saved);
  notify(orig.conv);
  pendingConvs.add(orig.conv);
  emit("list");
  flush(orig.conv);
  return true;
}

/** Send a failed message again: with its sent_timestamp, or a new one when that is too old. */
export async function retry(msg) {
  if (Math.abs(Date.now() * 1000 - msg.us) > RESTAMP_AFTER_US) {
    const moved = await state.db.restamp(msg.conv, ME, msg.us, () => newStamp(ME));
    if (!moved) return;
    afterRestamp(moved.conv, [moved]);
  } else {
    const again = await state.db.setState(msg.conv, ME, msg.us, "pending", {error: null, expired: 0});
    if (again) changed(again);
  }
  pendingConvs.add(msg.conv);
  flush(msg.conv);
}

/** Delete a failed message from the device (the server never stored it). */
export async function discard(msg) {
  await state.db.deleteOwn(msg.conv, ME, msg.us);
  emit("removed", msg);
}

/** Typing in the open conversation; `goesOn()` says, when a delayed one is due, if it still is. */
export function sendTyping(goesOn) {
  const conv = state.convs.get(state.open);
  if (!conv || conv.note) return;
  const now = Date.now();
  const wait = lastTypingSent + TYPING_SENT_EVERY_MS - now;
  if (wait > 0) {
    // Too soon after the last one: send it at the end of the interval if typing goes on.
    typingTimer ??= setTimeout(() => {
      typingTimer = null;
      if (goesOn()) sendTyping(goesOn);
    }, wait);
    return;
  }
  const command = {personal: "is_typing", group: "is_grp_typing", room: "is_room_typing"}[conv.kind];
  if (linkFor(conv.id).trySend(frame(command, conv.ref, ""))) lastTypingSent = now;
}

/** The conversation on screen changes: a delayed typing event is not sent. */
export function stopTyping() {
  clearTimeout(typingTimer);
  typingTimer = null;
}
