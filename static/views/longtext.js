// A text longer than one message may be (issue 18, defect 6). The server refuses a body over
// `limits.max_message_chars` characters (code points) or `limits.max_message_bytes` bytes of
// UTF-8 (SPEC 5.1, 10); the page carries both (`#me` data-max-chars / data-max-bytes, from the
// server's configuration). Nothing is cut silently: the compose box says how long the text is and
// offers to send it as several messages, split at paragraph, line or word boundaries.

import {state} from "../state.js";
import * as sync from "../sync.js";

const $ = (id) => document.getElementById(id);
const me = () => document.getElementById("me").dataset;
// SPEC 10's defaults, for a page that does not carry the limits (an older cached copy).
export const maxChars = () => Number(me().maxChars) || 4096;
export const maxBytes = () => Number(me().maxBytes) || 16384;

const utf8 = (cp) => (cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4);

/** Whether `text` is more than one message may carry. */
export function tooLong(text) {
  const chars = Array.from(text);
  if (chars.length > maxChars()) return true;
  return new TextEncoder().encode(text).length > maxBytes();
}

/**
 * `text` in parts that each fit one message (at most `chars` code points and `bytes` bytes of
 * UTF-8), in order. A part ends after the last blank line, else line break, else space in the
 * second half of what fits (else where it stops fitting); whitespace at the cuts is dropped, and
 * nothing else: joined with those cuts, the parts are the text.
 */
export function splitText(text, chars = maxChars(), bytes = maxBytes()) {
  const cps = Array.from(text);
  const parts = [];
  let start = 0;
  while (start < cps.length) {
    let n = 0;
    let size = 0;
    while (start + n < cps.length && n < chars) {
      const b = utf8(cps[start + n].codePointAt(0));
      if (size + b > bytes) break;
      size += b;
      n += 1;
    }
    let end = start + n;
    if (end < cps.length) {
      const window = cps.slice(start, end).join("");
      const half = Math.floor(n / 2);
      for (const re of [/\n\s*\n/g, /\n/g, /\s/g]) {
        let cut = -1;
        for (const m of window.matchAll(re)) cut = m.index + m[0].length;
        // matchAll counts UTF-16 units: back to code points.
        const at = cut < 0 ? -1 : Array.from(window.slice(0, cut)).length;
        if (at >= half) { end = start + at; break; }
      }
    }
    const part = cps.slice(start, end).join("").trim();
    if (part) parts.push(part);
    start = end;
  }
  return parts;
}

/** Bind the compose box: the note follows the text as it is typed or pasted. */
export function mount() {
  $("text").addEventListener("input", () => showNote($("text").value));
  $("too-long-split").addEventListener("click", sendSplit);
}

/** Say whether `text` is too long (and hide the note when it is not). */
export function showNote(text) {
  const note = $("too-long");
  if (!tooLong(text)) {
    note.hidden = true;
    return false;
  }
  const count = splitText(text).length;
  const n = Array.from(text).length;
  const words = n > maxChars()
    ? `This text is ${n.toLocaleString()} characters long; one message holds at most ` +
      `${maxChars().toLocaleString()}.`
    : `This text is longer than one message may be (${maxBytes().toLocaleString()} bytes).`;
  $("too-long-text").textContent = `${words} Nothing was cut: send it as ${count} messages, or shorten it.`;
  $("too-long-split").textContent = `Send as ${count} messages`;
  note.hidden = false;
  return true;
}

/** The person chose to split: each part is sent as its own message, in order. */
async function sendSplit() {
  const id = state.open;
  const box = $("text");
  const parts = splitText(box.value);
  if (!id || !parts.length) return;
  box.value = "";
  $("too-long").hidden = true;
  for (let i = 0; i < parts.length; i += 1) {
    if (!await sync.send(id, parts[i], [])) {
      // Not kept (the storage is full): what was not sent comes back to the box.
      if (state.open === id && !box.value) box.value = parts.slice(i).join("\n\n");
      showNote(box.value);
      return;
    }
  }
  box.focus();
}
