// Messages that refer to an earlier one (SPEC 13), without the DOM: reading the four reference
// fields of a frame, writing them into an outgoing one, and applying an edit, an unsend or a
// reaction to the record of the message it names. Used by db.js (records) and sync.js (frames).
//
// REF = {"msg_from": PHONE, "sent_timestamp": TS}: the original's sender (the real phone, even in
// a group) and its sent_timestamp as sent. A frame carries at most one of the four fields.
//
// On a record (db.js):
// - a reply keeps `replyTo: {from, us, ts}` and is shown like any message, with the quote;
// - an edit, unsend or reaction is an "action" record: `act: {kind, from, us, ts}` ("edit",
//   "delete", "react"), never shown, and `target` (the id of the record it changes) only when it
//   may apply: an edit or unsend only by the original's sender (REF.msg_from === the frame's
//   sender, SPEC 13; own-device copies included, SPEC 7.2), an edit with text. One without a
//   `target` changes nothing, ever. It is kept all the same (the server deletes what is
//   acknowledged, and a message fetched again is stored once), and an action that arrives before
//   its original is applied when the original comes (db.js looks its `target` up).
// - the original gains `editedUs` (the newest edit applied: its text replaced `body`),
//   `deleted: 1` (unsent: no text, no attachments, no reactions), and
//   `reactions: {emoji: [phone, ...]}` with `reactUs: {phone: us}` (each person has one reaction
//   on a message, their newest; "" takes it back).

import {parseTs} from "./time.js";

export const FIELDS = {reply_to: "reply", edit_of: "edit", delete_of: "delete", react_to: "react"};
const FIELD_OF = Object.fromEntries(Object.entries(FIELDS).map(([field, kind]) => [kind, field]));
const PHONE = /^[0-9]{10,15}$/;
// The common reactions the picker offers (any other single emoji can be typed or pasted).
export const COMMON_REACTIONS = ["👍", "❤️", "😂", "😮", "😢", "🙏"];
const segmenter = typeof Intl !== "undefined" && Intl.Segmenter
  ? new Intl.Segmenter(undefined, {granularity: "grapheme"}) : null;

/** The id of the record a reference names, in conversation `conv` (db.js messageId's form). */
export function refId(conv, ref) {
  return `${conv} ${ref.from} ${ref.us}`;
}

/**
 * The reference a received frame carries, as {kind, from, us, ts}; null when it carries none.
 * A malformed one (not {msg_from, sent_timestamp}, several fields, a timestamp that does not
 * parse) yields {bad: true}: the server refuses those, so a frame with one is dropped unshown.
 */
export function readRef(frame) {
  const present = Object.keys(FIELDS).filter((field) => frame[field] !== undefined && frame[field] !== null);
  if (!present.length) return null;
  if (present.length > 1) return {bad: true};
  const field = present[0];
  const ref = frame[field];
  if (!ref || typeof ref !== "object" || typeof ref.msg_from !== "string" || !PHONE.test(ref.msg_from) ||
      (typeof ref.sent_timestamp !== "string" && typeof ref.sent_timestamp !== "number")) {
    return {bad: true};
  }
  const us = parseTs(ref.sent_timestamp);
  if (Number.isNaN(us)) return {bad: true};
  return {kind: FIELDS[field], from: ref.msg_from, us, ts: ref.sent_timestamp};
}

/**
 * The record fields of received message `item` ({conv, from, body, ...}) that carries `ref`
 * (readRef): a reply's `replyTo`, or an action's `act` and, when it may apply, `target`.
 */
export function refFields(item, ref) {
  const point = {from: ref.from, us: ref.us, ts: ref.ts};
  if (ref.kind === "reply") return {replyTo: point};
  const act = {kind: ref.kind, ...point};
  let allowed = true;
  if (ref.kind === "edit" || ref.kind === "delete") allowed = ref.from === item.from;
  if (ref.kind === "edit") allowed = allowed && !!item.body;
  if (ref.kind === "react") allowed = item.body === "" || isOneEmoji(item.body);
  return allowed ? {act, target: refId(item.conv, ref)} : {act};
}

/** The reference field of own record `msg` for its outgoing frame ({} when it has none). */
export function frameRef(msg) {
  const point = msg.act || msg.replyTo;
  if (!point) return {};
  const field = msg.act ? FIELD_OF[msg.act.kind] : "reply_to";
  return {[field]: {msg_from: point.from, sent_timestamp: point.ts}};
}

/**
 * Apply action record `action` to the record `orig` it targets (mutated); true when it changed.
 * An unsent message stays unsent; an older edit or reaction than the one shown changes nothing,
 * whatever order they arrive in.
 */
export function applyAction(orig, action) {
  const {kind} = action.act;
  if (orig.deleted) return false;
  if (kind === "delete") {
    if (action.from !== orig.from) return false;
    orig.deleted = 1;
    orig.body = "";
    for (const key of ["atts", "files", "reactions", "reactUs", "editedUs"]) delete orig[key];
    return true;
  }
  if (kind === "edit") {
    if (action.from !== orig.from || !action.body || (orig.editedUs || 0) >= action.us) return false;
    orig.body = action.body;
    orig.editedUs = action.us;
    return true;
  }
  if (kind === "react") {
    const who = action.from;
    orig.reactUs = orig.reactUs || {};
    if ((orig.reactUs[who] || 0) >= action.us) return false;
    orig.reactUs[who] = action.us;
    const reactions = {};
    for (const [emoji, people] of Object.entries(orig.reactions || {})) {
      const rest = people.filter((p) => p !== who);
      if (rest.length) reactions[emoji] = rest;
    }
    if (action.body) reactions[action.body] = [...(reactions[action.body] || []), who];
    orig.reactions = reactions;
    return true;
  }
  return false;
}

/**
 * Whether `text` is a single extended grapheme cluster of at most 32 code points, without
 * whitespace or control characters (SPEC 13's "a single grapheme, at most 32 characters").
 */
export function isOneGrapheme(text) {
  if (typeof text !== "string" || !text || [...text].length > 32) return false;
  if (/[\s\p{Cc}]/u.test(text)) return false;
  return !segmenter || [...segmenter.segment(text)].length === 1;
}

/** Whether `text` is one emoji, what the server accepts as a reaction and the picker may send
 *  (chatserver/protocol.py is_reaction): one grapheme as above holding a pictograph, a flag or a
 *  keycap ("a", "👍👍" are not). A reaction received that is not one is dropped. */
export function isOneEmoji(text) {
  return isOneGrapheme(text) && /\p{Extended_Pictographic}|\p{Regional_Indicator}|\u20E3/u.test(text);
}
