// The history on this device: IndexedDB, one database per account (`chat-<phone>`).
//
// messages: one record per message, id "<conv> <from> <us>" — the protocol's identity
//           (conversation, sender, instant to the microsecond), so a message fetched again after a
//           lost acknowledgement, or stored by a second tab, is stored once.
//           {id, conv, from, us, ts, body, mine, state?, rcv?, error?, tried?, writtenUs?,
//            atts?, files?}
//           `state` (own messages only): pending -> sent -> received -> read, or failed.
//           `tried` (own): a frame with this `ts` may have reached the server (set before sending).
//           `writtenUs` (own, re-stamped): when it was written, before it got a new `ts`.
//           `expired` (own): the server deleted it undelivered (SPEC 10, msg_expired).
//           `atts`: the attachments it carries (SPEC 8), as the server describes them:
//           [{id, name, content_type, size, width?, height?, thumbnail}].
//           `files` (received with attachments): "fetching" while their bytes are not all on
//           this device yet (the message is not acknowledged: also while the browser's storage
//           is full), "gone" when the server no longer has them; absent once all are here.
//           SPEC 13 (references.js): `replyTo` {from, us, ts} on a reply; an edit, unsend or
//           reaction is an action record (`act`, `target`: never shown, `page` skips it) that
//           changes its original's `body`/`editedUs`, `deleted`, `reactions`/`reactUs`.
// files:    the bytes of attachments (SPEC 8), one record per part, key "<attachment id> file"
//           or "<attachment id> thumb": {key, id, part, blob}. Kept on this device, since the
//           server deletes them with their message.
// convs:    one record per conversation, id "p:<phone>", "g:<key>" or "r:<room>".
//           {id, kind, ref, title, lastUs, lastText, lastFrom, unread, readUs, ...}
//
// Every write is one transaction; callers await it before they acknowledge anything.

import {applyAction} from "./references.js";

const VERSION = 3;
export const DELETED = "This message was deleted";
const RANK = {failed: 0, pending: 0, sent: 1, received: 2, read: 3};

function done(req) {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

export function messageId(conv, from, us) {
  return `${conv} ${from} ${us}`;
}

/** The key of an attachment's part ("file" or "thumb") in the files store. */
export function fileKey(id, part) {
  return `${id} ${part}`;
}

export function convKind(id) {
  return {p: "personal", g: "group", r: "room"}[id[0]];
}

export function newConv(id) {
  return {id, kind: convKind(id), ref: id.slice(2), title: id.slice(2), lastUs: 0, lastText: "",
          lastFrom: "", unread: 0, readUs: 0};
}

export class LocalDb {
  constructor(idb) {
    this.idb = idb;
  }

  /** Open (creating or upgrading) the history of `owner`. */
  static async open(owner) {
    const req = indexedDB.open(`chat-${owner}`, VERSION);
    req.onupgradeneeded = (ev) => {
      const idb = req.result;
      if (ev.oldVersion < 1) {
        const messages = idb.createObjectStore("messages", {keyPath: "id"});
        messages.createIndex("conv", ["conv", "us"]);
        messages.createIndex("state", "state"); // own messages only: incoming ones have no state
        idb.createObjectStore("convs", {keyPath: "id"});
      }
      if (ev.oldVersion < 2) idb.createObjectStore("files", {keyPath: "key"});
      // SPEC 13: the actions (edits, unsends, reactions) waiting for, or applied to, a message.
      if (ev.oldVersion < 3) req.transaction.objectStore("messages").createIndex("target", "target");
    };
    const idb = await done(req);
    // Another tab upgraded the schema: let it, and reload this one on its next start.
    idb.onversionchange = () => idb.close();
    return new LocalDb(idb);
  }

  /**
   * Close and delete this history (the account was deleted, or the person chose Remove at
   * logout); other tabs of this client close theirs on `versionchange`. Resolves true once the
   * database is deleted, false when the browser refused. Never gives up while another
   * connection holds it open (a tab that does not close it, issue 18, defect 9): the deletion
   * waits for it, and `onBlocked()` is called so that the page can say why it waits — going on
   * (to /login) before the deletion is done could leave the history readable.
   */
  async destroy({onBlocked} = {}) {
    const name = this.idb.name;
    this.idb.close();
    return new Promise((resolve) => {
      const req = indexedDB.deleteDatabase(name);
      req.onsuccess = () => resolve(true);
      req.onerror = () => resolve(false);
      req.onblocked = () => onBlocked?.();
    });
  }

  /** Run `fn(stores)` in one transaction; resolves with its result once committed. */
  async tx(names, mode, fn) {
    const t = this.idb.transaction(names, mode, {durability: "strict"});
    const committed = new Promise((resolve, reject) => {
      t.oncomplete = resolve;
      t.onerror = () => reject(t.error);
      t.onabort = () => reject(t.error || new Error("transaction aborted"));
    });
    const stores = Object.fromEntries(names.map((n) => [n, t.objectStore(n)]));
    let result;
    try {
      result = await fn(stores);
    } catch (err) {
      try { t.abort(); } catch { /* already finished */ }
      throw err;
    }
    await committed;
    return result;
  }

  // -- conversations -------------------------------------------------------------------------

  async convs() {
    return this.tx(["convs"], "readonly", ({convs}) => done(convs.getAll()));
  }

  async getConv(id) {
    return this.tx(["convs"], "readonly", ({convs}) => done(convs.get(id)));
  }

  /** Read-modify-write one conversation (created when missing); resolves with the result. */
  async updateConv(id, change) {
    return this.tx(["convs"], "readwrite", async ({convs}) => {
      const conv = (await done(convs.get(id))) || newConv(id);
      change(conv);
      convs.put(conv);
      return conv;
    });
  }

  // -- messages ------------------------------------------------------------------------------

  /**
   * Keep an outgoing message (state "pending") and make it its conversation's last message;
   * with it, in the same transaction, the bytes of its attachments (`files`: [{id, part, blob}]).
   * Rejects with a QuotaExceededError, keeping nothing, when the browser's storage is full.
   */
  async addOwn(msg, files = []) {
    const record = {...msg, id: messageId(msg.conv, msg.from, msg.us), mine: 1, state: "pending"};
    const names = ["messages", "convs", ...(files.length ? ["files"] : [])];
    const conv = await this.tx(names, "readwrite", async ({messages, convs, files: store}) => {
      for (const f of files) store.put({key: fileKey(f.id, f.part), ...f});
      messages.put(record);
      const c = (await done(convs.get(msg.conv))) || newConv(msg.conv);
      bumpLast(c, record);
      convs.put(c);
      return c;
    });
    return {record, conv};
  }

  /**
   * Store received messages in one transaction. Returns the ones that were new and the
   * conversations they changed. `counted(conv)` says whether a new message counts as unread.
   */
  async storeIncoming(list, counted) {
    return this.tx(["messages", "convs", "files"], "readwrite", async ({messages, convs, files}) => {
      const fresh = [];
      const changed = new Map();
      const touched = new Map(); // originals an action changed (SPEC 13), by id
      const stored = new Map();  // the records stored by this call, by id: an action after its
                                 // original in the same batch changes the very record returned
      const convOf = async (id) => {
        if (!changed.has(id)) changed.set(id, (await done(convs.get(id))) || newConv(id));
        return changed.get(id);
      };
      for (const msg of list) {
        const record = {mine: 0, ...msg, id: messageId(msg.conv, msg.from, msg.us)};
        if (await done(messages.getKey(record.id)) !== undefined) continue;
        if (record.act) {
          // Kept unshown; applied now when its original is here, else when it comes.
          messages.put(record);
          const orig = record.target && (stored.get(record.target) || await done(messages.get(record.target)));
          if (orig && applyAndKeep(orig, [record], messages, files)) {
            if (!stored.has(orig.id)) touched.set(orig.id, orig);
            relabel(await convOf(orig.conv), orig);
          }
          continue;
        }
        // Actions that came before this message (or in the same batch, ahead of it).
        const early = await done(messages.index("target").getAll(record.id));
        applyAndKeep(record, early, messages, files);
        messages.put(record);
        fresh.push(record);
        stored.set(record.id, record);
        const conv = await convOf(msg.conv);
        bumpLast(conv, record);
        if (counted(conv, record)) conv.unread = (conv.unread || 0) + 1;
      }
      for (const conv of changed.values()) convs.put(conv);
      return {fresh, convs: [...changed.values()], touched: [...touched.values()]};
    });
  }

  /**
   * Keep own action `msg` (an edit, unsend or reaction of mine, SPEC 13: `act`, `target`) as
   * "pending" for the outbox, and apply it to its original at once, in one transaction.
   * Resolves {record, orig} (`orig`: the changed original, or null when it is not here).
   */
  async addOwnAction(msg) {
    const record = {...msg, id: messageId(msg.conv, msg.from, msg.us), mine: 1, state: "pending"};
    return this.tx(["messages", "convs", "files"], "readwrite", async ({messages, convs, files}) => {
      messages.put(record);
      const orig = record.target && await done(messages.get(record.target));
      if (!orig || !applyAndKeep(orig, [record], messages, files)) return {record, orig: null};
      const c = await done(convs.get(msg.conv));
      if (c && relabel(c, orig)) convs.put(c);
      return {record, orig};
    });
  }

  /**
   * Messages whose text contains `query` (case-insensitive), newest first, at most `limit`: in
   * conversation `conv`, or in every conversation of this device when it is null. Unsent
   * messages and actions are left out.
   */
  async search(query, conv = null, limit = 100) {
    const needle = fold(query);
    if (!needle) return [];
    return this.tx(["messages"], "readonly", ({messages}) => new Promise((resolve, reject) => {
      const out = [];
      const source = conv ? messages.index("conv") : messages;
      const range = conv ? IDBKeyRange.bound([conv, -Infinity], [conv, Infinity]) : undefined;
      const req = source.openCursor(range, conv ? "prev" : "next");
      req.onerror = () => reject(req.error);
      req.onsuccess = () => {
        const cursor = req.result;
        if (!cursor || (conv && out.length >= limit)) {
          out.sort((a, b) => b.us - a.us);
          return resolve(out.slice(0, limit));
        }
        const m = cursor.value;
        if (!m.act && !m.deleted && m.body && fold(m.body).includes(needle)) out.push(m);
        return cursor.continue();
      };
    }));
  }

  /** The message `id`, or undefined. */
  async message(id) {
    return this.tx(["messages"], "readonly", ({messages}) => done(messages.get(id)));
  }

  /** Which of `keys` (fileKey) have no bytes on this device. */
  async missingFiles(keys) {
    return this.tx(["files"], "readonly", async ({files}) => {
      const missing = [];
      for (const key of keys) if (await done(files.getKey(key)) === undefined) missing.push(key);
      return missing;
    });
  }

  /** The bytes of attachment `id`'s `part` ("file" or "thumb") as a Blob, or null. */
  async file(id, part) {
    const record = await this.tx(["files"], "readonly", ({files}) => done(files.get(fileKey(id, part))));
    return record?.blob || null;
  }

  /**
   * Keep the bytes of message `msgId`'s attachments (`files`: [{id, part, blob}]) and set its
   * `files` mark to `mark` (undefined: all here), in one transaction. Resolves with the message
   * record, or null when the device no longer has it. Rejects with a QuotaExceededError, keeping
   * nothing, when the browser's storage is full.
   */
  async keepFiles(msgId, files, mark) {
    return this.tx(["messages", "files"], "readwrite", async ({messages, files: store}) => {
      const msg = await done(messages.get(msgId));
      if (!msg) return null;
      for (const f of files) store.put({key: fileKey(f.id, f.part), ...f});
      if (mark) msg.files = mark; else delete msg.files;
      messages.put(msg);
      return msg;
    });
  }

  /** Set message `msgId`'s `files` mark (see above); resolves with the record when it changed. */
  async markFiles(msgId, mark) {
    return this.tx(["messages"], "readwrite", async ({messages}) => {
      const msg = await done(messages.get(msgId));
      if (!msg || msg.files === mark) return null;
      if (mark) msg.files = mark; else delete msg.files;
      messages.put(msg);
      return msg;
    });
  }

  /** Up to `limit` messages of `conv` older than `beforeUs`, oldest first. */
  async page(conv, beforeUs = Infinity, limit = 50) {
    return this.tx(["messages"], "readonly", ({messages}) => new Promise((resolve, reject) => {
      const upper = Number.isFinite(beforeUs) ? [conv, beforeUs] : [conv, Infinity];
      const range = IDBKeyRange.bound([conv, -Infinity], upper, false, true);
      const out = [];
      const req = messages.index("conv").openCursor(range, "prev");
      req.onerror = () => reject(req.error);
      req.onsuccess = () => {
        const cursor = req.result;
        if (!cursor || out.length >= limit) return resolve(out.reverse());
        if (!cursor.value.act) out.push(cursor.value); // actions are never shown
        cursor.continue();
      };
    }));
  }

  /** Own messages not yet acknowledged by the server, oldest first. */
  async pending() {
    const list = await this.tx(["messages"], "readonly",
                               ({messages}) => done(messages.index("state").getAll("pending")));
    return list.sort((a, b) => a.us - b.us);
  }

  /**
   * Move one own message forward to `state` (never backwards, except pending <-> failed);
   * `extra` fields are merged. Resolves with the record, or null when there is none.
   */
  async setState(conv, from, us, state, extra = {}) {
    return this.tx(["messages"], "readwrite", async ({messages}) => {
      const msg = await done(messages.get(messageId(conv, from, us)));
      if (!msg || !msg.mine) return null;
      const forward = RANK[state] > RANK[msg.state] ||
        (RANK[state] === 0 && RANK[msg.state] === 0);
      if (!forward && !Object.keys(extra).length) return msg;
      if (forward) msg.state = state;
      Object.assign(msg, extra);
      if (RANK[msg.state] > 0) delete msg.error;
      messages.put(msg);
      return msg;
    });
  }

  /**
   * Ready the pending own messages `usList` of `conv` for sending, in one transaction (so that
   * two tabs never both re-stamp one message): each is marked `tried` before its frame leaves.
   * One never tried whose `ts` is further than `staleUs` from `nowUs` (the server refuses a
   * sent_timestamp far from its clock, SPEC 10) gets a new identity from `stamp()` -> {us, ts},
   * and so does every later never-tried one, which keeps their order. A message no longer
   * pending (sent meanwhile, or re-stamped by another tab) is left out: it is never sent again.
   * Resolves {ready: [{record, old?}], conv?}: `old` is the record a re-stamped one replaced;
   * `conv` the conversation when its last message changed.
   */
  async prepareSend(conv, from, usList, {nowUs, staleUs, stamp}) {
    return this.tx(["messages", "convs"], "readwrite", async ({messages, convs}) => {
      const ready = [];
      let restamping = false;
      for (const us of [...usList].sort((a, b) => a - b)) {
        const msg = await done(messages.get(messageId(conv, from, us)));
        if (!msg || !msg.mine || msg.state !== "pending") continue;
        if (!msg.tried && (restamping || Math.abs(nowUs - msg.us) > staleUs)) {
          restamping = true;
          const record = restamped(msg, stamp());
          record.tried = 1;
          messages.delete(msg.id);
          messages.put(record);
          ready.push({record, old: msg});
        } else {
          if (!msg.tried) {
            msg.tried = 1;
            messages.put(msg);
          }
          ready.push({record: msg});
        }
      }
      if (!restamping) return {ready};
      const c = (await done(convs.get(conv))) || newConv(conv);
      for (const {record} of ready) bumpLast(c, record);
      convs.put(c);
      return {ready, conv: c};
    });
  }

  /**
   * Give own message `us` of `conv` a new identity from `stamp()` (a person's Retry of a message
   * the server refuses for its old sent_timestamp) and make it pending, never tried. Resolves
   * {record, old, conv}, or null when the message is gone or the server has it (state sent or later).
   */
  async restamp(conv, from, us, stamp) {
    return this.tx(["messages", "convs"], "readwrite", async ({messages, convs}) => {
      const msg = await done(messages.get(messageId(conv, from, us)));
      if (!msg || !msg.mine || RANK[msg.state] > 0) return null;
      const record = restamped(msg, stamp());
      record.state = "pending";
      delete record.error;
      delete record.tried;
      delete record.expired;
      messages.delete(msg.id);
      messages.put(record);
      const c = (await done(convs.get(conv))) || newConv(conv);
      bumpLast(c, record);
      convs.put(c);
      return {record, old: msg, conv: c};
    });
  }

  /**
   * The server deleted own message `us` of `conv` undelivered (SPEC 10 `msg_expired`). In a
   * dialogue it was not delivered at all: "failed", with `error`, unless a receipt says it
   * arrived. In a group it missed some members (which, the push does not say): `expired` only.
   * Resolves with the record, or null when there is none or nothing changed.
   */
  async markExpired(conv, from, us, error) {
    return this.tx(["messages"], "readwrite", async ({messages}) => {
      const msg = await done(messages.get(messageId(conv, from, us)));
      if (!msg || !msg.mine || msg.expired) return null;
      if (conv[0] === "p") {
        if (RANK[msg.state] >= RANK.received) return null;
        msg.state = "failed";
        msg.error = error;
      }
      msg.expired = 1;
      messages.put(msg);
      return msg;
    });
  }

  /** A group participant has this own message: add them to its `rcv` list. */
  async addReceipt(conv, from, us, phone) {
    return this.tx(["messages"], "readwrite", async ({messages}) => {
      const msg = await done(messages.get(messageId(conv, from, us)));
      if (!msg || !msg.mine) return null;
      msg.rcv = [...new Set([...(msg.rcv || []), phone])];
      if (msg.state === "pending") msg.state = "sent"; // a receipt implies the server stored it
      messages.put(msg);
      return msg;
    });
  }

  /**
   * Own messages of `conv` up to `us` move to `state` (received or read). Walks back from `us`
   * and stops at the first one already there. Resolves with the records it changed.
   */
  async advanceUpTo(conv, us, state) {
    return this.tx(["messages"], "readwrite", ({messages}) => new Promise((resolve, reject) => {
      const range = IDBKeyRange.bound([conv, -Infinity], [conv, us]);
      const changed = [];
      const req = messages.index("conv").openCursor(range, "prev");
      req.onerror = () => reject(req.error);
      req.onsuccess = () => {
        const cursor = req.result;
        if (!cursor) return resolve(changed);
        const msg = cursor.value;
        if (msg.mine && RANK[msg.state] >= RANK[state]) return resolve(changed);
        if (msg.mine && msg.state !== "pending" && msg.state !== "failed") {
          msg.state = state;
          cursor.update(msg);
          changed.push(msg);
        }
        cursor.continue();
      };
    }));
  }

  /**
   * I read conversation `conv` up to `us` on another device of mine (SPEC 7.2, `msg_read` pushed
   * to the reader's own sockets): its read position moves there (never back) and its unread
   * count becomes the number of messages from others (`from` not `me`, not mine) after it, in one
   * transaction. Resolves with the conversation, or null when this device has none.
   */
  async readElsewhere(conv, me, us) {
    return this.tx(["messages", "convs"], "readwrite", async ({messages, convs}) => {
      const c = await done(convs.get(conv));
      if (!c) return null;
      c.readUs = Math.max(c.readUs || 0, us);
      const range = IDBKeyRange.bound([conv, c.readUs], [conv, Infinity], true, false);
      let unread = 0;
      await new Promise((resolve, reject) => {
        const req = messages.index("conv").openCursor(range);
        req.onerror = () => reject(req.error);
        req.onsuccess = () => {
          const cursor = req.result;
          if (!cursor) return resolve();
          if (!cursor.value.mine && !cursor.value.act && cursor.value.from !== me) unread += 1;
          return cursor.continue();
        };
      });
      c.unread = Math.min(c.unread || 0, unread);
      convs.put(c);
      return c;
    });
  }

  /** The latest message received from someone else in `conv`, or null. */
  async lastIncoming(conv) {
    return this.tx(["messages"], "readonly", ({messages}) => new Promise((resolve, reject) => {
      const range = IDBKeyRange.bound([conv, -Infinity], [conv, Infinity]);
      const req = messages.index("conv").openCursor(range, "prev");
      req.onerror = () => reject(req.error);
      req.onsuccess = () => {
        const cursor = req.result;
        if (!cursor) return resolve(null);
        if (!cursor.value.mine && !cursor.value.act) return resolve(cursor.value);
        cursor.continue();
      };
    }));
  }

  /** Delete one own message that the server refused (it was never stored there), and the
   *  bytes of its attachments. */
  async deleteOwn(conv, from, us) {
    return this.tx(["messages", "files"], "readwrite", async ({messages, files}) => {
      const id = messageId(conv, from, us);
      const msg = await done(messages.get(id));
      for (const a of msg?.atts || []) {
        files.delete(fileKey(a.id, "file"));
        files.delete(fileKey(a.id, "thumb"));
      }
      return done(messages.delete(id));
    });
  }
}

/** `msg` under a new sent_timestamp {us, ts}: a new record id, the first writing time kept. */
function restamped(msg, {us, ts}) {
  return {...msg, us, ts, id: messageId(msg.conv, msg.from, us), writtenUs: msg.writtenUs ?? msg.us};
}

/** What a message without text shows in the list: its attachments, briefly. */
export function attachmentsLabel(atts) {
  if (!atts?.length) return "";
  const photos = atts.filter((a) => a.width && a.height).length;
  if (photos === atts.length) return photos === 1 ? "Photo" : `${photos} photos`;
  return atts.length === 1 ? atts[0].name : `${atts.length} files`;
}

/** Apply `actions` (records, SPEC 13) to `orig` in order and keep it, dropping the bytes of an
 *  unsent one's attachments; true when it changed. */
function applyAndKeep(orig, actions, messages, files) {
  let any = false;
  for (const action of [...actions].sort((a, b) => a.us - b.us)) {
    const atts = orig.atts || [];
    if (!applyAction(orig, action)) continue;
    any = true;
    if (orig.deleted) {
      for (const a of atts) {
        files.delete(fileKey(a.id, "file"));
        files.delete(fileKey(a.id, "thumb"));
      }
    }
  }
  if (any) messages.put(orig);
  return any;
}

/** The list's preview follows an edit or unsend of the conversation's last message. */
function relabel(conv, orig) {
  if (orig.us !== conv.lastUs || orig.from !== conv.lastFrom) return false;
  const text = orig.deleted ? DELETED : orig.body || attachmentsLabel(orig.atts);
  if (conv.lastText === text) return false;
  conv.lastText = text;
  return true;
}

/** Text folded for search: lower case, compatibility forms, no combining accents. */
function fold(text) {
  return String(text).normalize("NFKD").replace(/\p{M}/gu, "").toLowerCase();
}

function bumpLast(conv, msg) {
  if (msg.act) return; // an edit, unsend or reaction is no message of its own
  if (msg.us >= (conv.lastUs || 0)) {
    conv.lastUs = msg.us;
    conv.lastText = msg.body || attachmentsLabel(msg.atts);
    conv.lastFrom = msg.from;
  }
  if (msg.mine) conv.lastOwnUs = Math.max(conv.lastOwnUs || 0, msg.us);
}
