// Photos and files (SPEC 8), without the DOM: uploads, the attachments a message carries, and
// their bytes on this device. The server keeps an attachment exactly as long as its message, so
// every device keeps its own copy in IndexedDB (db.js, the `files` store): the sender's when it
// sends, a recipient's before it acknowledges (sync.js, storeThenAcknowledge). See docs/client.md.

import {fileKey} from "./db.js";

export {attachmentsLabel} from "./db.js";
import {upload as post} from "./net.js";
import {state} from "./state.js";

// The types the server serves inline (SPEC 8); anything else (SVG and HTML among them) is only
// ever offered as a download, and kept on the device as application/octet-stream, so that not
// even a blob: URL of it can be rendered as a page.
export const IMAGE_TYPES = new Set(["image/jpeg", "image/png", "image/gif", "image/webp"]);
// The server's id: at least 128 random bits, url-safe (chatserver/protocol.py).
const ID_RE = /^[A-Za-z0-9_-]{22,64}$/;
// Downloads at the same time (each message's parts one after the other).
const DOWNLOADS_AT_ONCE = 3;

/** Whether `att` is a photo shown inline: an image type the server serves inline, with its size. */
export function isPhoto(att) {
  return IMAGE_TYPES.has(att.content_type) && att.width > 0 && att.height > 0;
}

/**
 * The attachments of a frame (SPEC 8: `[{"id", "name", "content_type", "size", "width"?,
 * "height"?, "thumbnail"}]`), checked and reduced to those fields; [] when there are none.
 * An entry that is not of that shape is dropped.
 */
export function cleanAttachments(value) {
  if (!Array.isArray(value)) return [];
  const out = [];
  for (const a of value) {
    if (!a || typeof a !== "object" || typeof a.id !== "string" || !ID_RE.test(a.id)) continue;
    const att = {
      id: a.id,
      name: typeof a.name === "string" && a.name ? a.name : "file",
      content_type: typeof a.content_type === "string" ? a.content_type.toLowerCase() : "application/octet-stream",
      size: Number.isSafeInteger(a.size) && a.size >= 0 ? a.size : 0,
      thumbnail: a.thumbnail === true,
    };
    if (Number.isSafeInteger(a.width) && Number.isSafeInteger(a.height) && a.width > 0 && a.height > 0) {
      att.width = a.width;
      att.height = a.height;
    }
    out.push(att);
  }
  return out;
}

/** "812 bytes", "14 KB", "3.4 MB" (decimal units, as file managers show them). */
export function sizeLabel(bytes) {
  if (bytes < 1000) return `${bytes} bytes`;
  if (bytes < 1_000_000) return `${Math.round(bytes / 1000)} KB`;
  if (bytes < 1_000_000_000) return `${(bytes / 1_000_000).toFixed(1)} MB`;
  return `${(bytes / 1_000_000_000).toFixed(2)} GB`;
}

/** Whether `err` is the browser saying its storage for this site is full. */
export function isQuotaError(err) {
  return err?.name === "QuotaExceededError" || /quota/i.test(String(err?.message || ""));
}

/** The server's URL of attachment `id`'s part ("file" or "thumb"). */
export function serverUrl(id, part) {
  return `/chat/attachment/${encodeURIComponent(id)}${part === "thumb" ? "?thumbnail=1" : ""}`;
}

/** `blob` typed for keeping: its own type when it is shown inline, else application/octet-stream. */
function typed(blob, type) {
  const t = IMAGE_TYPES.has(type) ? type : "application/octet-stream";
  return blob.type === t ? blob : new Blob([blob], {type: t});
}

// -- uploading ------------------------------------------------------------------------------

/** Why an upload failed, as the person reads it; `status` and `data` from net.upload. */
export function uploadError({status, data}) {
  const reason = data?.error;
  if (status === 413) return `Too big to send: ${reason || "over the server's limit"}`;
  if (status === 429) return "Too many uploads right now: try again in a moment";
  if (status === 408) return "The upload took too long: try again on a better connection";
  if (status === 401) return "You are logged out: log in again to send files";
  if (status === 0) return "The upload was cut off: the server cannot be reached";
  return `Not accepted: ${reason || `the server answered ${status}`}`;
}

/**
 * Upload `file` (SPEC 8, POST /chat/special/attachment), reporting `onProgress(sent, total)`.
 * Returns {done, abort}: `done` resolves {ok: true, meta, file, thumb} — `meta` the server's
 * description (cleanAttachments), `file` the bytes to keep on this device, `thumb` the server's
 * thumbnail (null when there is none or it could not be fetched) — or {ok: false, aborted?,
 * again?, error}: the reason as the person reads it, `again` when trying again may work.
 */
export function upload(file, onProgress) {
  const request = post("/chat/special/attachment", file, onProgress);
  const done = request.done.then(async (r) => {
    if (r.aborted) return {ok: false, aborted: true, error: "cancelled"};
    const [meta] = r.ok ? cleanAttachments([r.data]) : [];
    if (!meta) {
      // Worth trying again: the network, a timeout, the rate limit, a server in trouble.
      const again = r.status === 0 || r.status === 408 || r.status === 429 || r.status >= 500;
      return {ok: false, again, error: r.ok ? "the server's answer was not understood" : uploadError(r)};
    }
    let thumb = null;
    if (meta.thumbnail) {
      // Small (at most 320 px): what the list of messages shows here, as on the other side.
      try {
        const resp = await fetch(serverUrl(meta.id, "thumb"), {credentials: "same-origin"});
        if (resp.ok) thumb = typed(await resp.blob(), resp.headers.get("Content-Type") || "");
      } catch { /* the photo itself stands in for it */ }
    }
    return {ok: true, meta, file: typed(file, meta.content_type), thumb};
  });
  return {done, abort: request.abort};
}

/** The records of an upload's bytes for db.addOwn: [{id, part, blob}]. */
export function filesOf({meta, file, thumb}) {
  return [{id: meta.id, part: "file", blob: file}, ...(thumb ? [{id: meta.id, part: "thumb", blob: thumb}] : [])];
}

// -- keeping what arrives --------------------------------------------------------------------

let running = 0;
const queue = [];

/** Run `fn` when fewer than DOWNLOADS_AT_ONCE downloads run. */
async function inTurn(fn) {
  if (running >= DOWNLOADS_AT_ONCE) await new Promise((resolve) => queue.push(resolve));
  running += 1;
  try {
    return await fn();
  } finally {
    running -= 1;
    queue.shift()?.();
  }
}

/** The parts of `atts` a device keeps: every file, and the thumbnails the server made. */
function partsOf(atts) {
  return atts.flatMap((a) => [{att: a, part: "file"}, ...(a.thumbnail ? [{att: a, part: "thumb"}] : [])]);
}

/**
 * Download what this device lacks of message `msg`'s attachments (files and thumbnails) and keep
 * it with the message, in one IndexedDB transaction. Resolves with what happened:
 * - {kept: record}: every part is on this device now (`record` the message, when it changed);
 * - {gone: record}: the server has no such attachment any more (404): nothing to wait for;
 * - {full: true}: the browser's storage is full (QuotaExceededError): nothing kept;
 * - {failed: reason}: the network or the server failed: try again later.
 */
export async function keepAttachments(msg) {
  const parts = partsOf(msg.atts || []);
  const missing = new Set(await state.db.missingFiles(parts.map((p) => fileKey(p.att.id, p.part))));
  const todo = parts.filter((p) => missing.has(fileKey(p.att.id, p.part)));
  if (!todo.length) {
    return {kept: msg.files ? await state.db.markFiles(msg.id, undefined) : null};
  }
  return inTurn(async () => {
    const files = [];
    for (const {att, part} of todo) {
      let resp;
      try {
        resp = await fetch(serverUrl(att.id, part), {credentials: "same-origin"});
      } catch {
        return {failed: "the server cannot be reached"};
      }
      if (resp.status === 404) {
        // The server deleted it (its message left a room's history, or expired): keep what came.
        const record = await keepOrFull(msg.id, files, "gone");
        return record.full ? record : {gone: record.record};
      }
      if (!resp.ok) return {failed: `the server answered ${resp.status}`};
      let blob;
      try {
        blob = await resp.blob();
      } catch {
        return {failed: "the download was cut off"};
      }
      if (part === "file" && blob.size !== att.size) return {failed: "the download was cut off"};
      files.push({id: att.id, part, blob: typed(blob, part === "file" ? att.content_type
                                                    : resp.headers.get("Content-Type") || "")});
    }
    const result = await keepOrFull(msg.id, files, undefined);
    return result.full ? result : {kept: result.record};
  });
}

async function keepOrFull(msgId, files, mark) {
  try {
    return {record: await state.db.keepFiles(msgId, files, mark)};
  } catch (err) {
    if (!isQuotaError(err)) throw err;
    return {full: true};
  }
}

// -- showing ---------------------------------------------------------------------------------

const urls = new Map(); // fileKey -> object URL of the bytes on this device

/**
 * A URL for attachment `id`'s `part` kept on this device (a blob: URL, made once per page), or
 * null when this device does not have it.
 */
export async function localUrl(id, part) {
  const key = fileKey(id, part);
  if (urls.has(key)) return urls.get(key);
  const blob = await state.db.file(id, part);
  if (!blob) return null;
  if (!urls.has(key)) urls.set(key, URL.createObjectURL(blob));
  return urls.get(key);
}
