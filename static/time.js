// Timestamps: the protocol's UTC strings <-> microseconds since the epoch, and the labels a
// person reads ("just now", "14:05", "Tue", "21 Nov 2026").
//
// Microseconds fit a JavaScript number exactly until the year 2255 (2^53 µs), so identity
// comparisons are plain number comparisons.

const TS_RE = /^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,6}))?Z?$/;

/** A protocol timestamp (`YYYY-MM-DD HH:MM:SS[.f]` or ISO with T/Z) -> µs since the epoch, or NaN. */
export function parseTs(text) {
  const m = TS_RE.exec(String(text));
  if (!m) return NaN;
  const ms = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6]);
  return ms * 1000 + Number((m[7] || "0").padEnd(6, "0"));
}

const pad = (n, width = 2) => String(n).padStart(width, "0");

/** µs since the epoch -> `YYYY-MM-DD HH:MM:SS.ffffff` UTC, the format the client sends. */
export function formatTs(us) {
  const d = new Date(Math.floor(us / 1000));
  return `${pad(d.getUTCFullYear(), 4)}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
    `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}.` +
    pad(us % 1_000_000, 6);
}

const MAX_CLOCK_STEP_BACK_US = 3600 * 1_000_000;

/**
 * A new sent_timestamp for `owner`: now, unique per sender even across tabs (the last one is kept
 * in localStorage, shared by every tab of this origin) — bumped by 1 µs on a tie.
 */
export function newStamp(owner) {
  const key = `chat.lastStamp.${owner}`;
  // Date.now() has millisecond resolution; a random sub-millisecond part makes two devices of
  // the same person unlikely to collide as well.
  let us = Date.now() * 1000 + Math.floor(Math.random() * 1000);
  let last = 0;
  try { last = Number(localStorage.getItem(key)) || 0; } catch { /* storage disabled */ }
  // A last stamp far ahead means the clock was set back (it was wrong): follow the clock, or
  // every new message would carry a time the server refuses (SPEC 10, timestamp skew).
  if (us <= last && last - us < MAX_CLOCK_STEP_BACK_US) us = last + 1;
  try { localStorage.setItem(key, String(us)); } catch { /* storage disabled */ }
  return {us, ts: formatTs(us)};
}

const HHMM = new Intl.DateTimeFormat("en-GB", {hour: "2-digit", minute: "2-digit", hour12: false});
const WEEKDAY = new Intl.DateTimeFormat("en-GB", {weekday: "short"});
const DATE = new Intl.DateTimeFormat("en-GB", {day: "numeric", month: "short", year: "numeric"});
const FULL = new Intl.DateTimeFormat("en-GB", {dateStyle: "full", timeStyle: "medium"});

function startOfDay(ms) {
  const d = new Date(ms);
  d.setHours(0, 0, 0, 0);
  return d.getTime();
}

/** The short label of a moment by its age: "just now", "14:05" (today), "Tue" (this week), "21 Nov 2026". */
export function ageLabel(us, nowMs = Date.now()) {
  const ms = us / 1000;
  if (nowMs - ms < 60_000) return "just now"; // also a moment slightly in the future (clock skew)
  const days = Math.round((startOfDay(nowMs) - startOfDay(ms)) / 86_400_000);
  if (days <= 0) return HHMM.format(ms);
  if (days < 7) return WEEKDAY.format(ms);
  return DATE.format(ms);
}

/** The full local date and time, for a tooltip. */
export function fullLabel(us) {
  return FULL.format(us / 1000);
}

/** The heading of a day in a conversation: "Today", "Yesterday", "Tuesday", "21 Nov 2026". */
export function dayLabel(us, nowMs = Date.now()) {
  const days = Math.round((startOfDay(nowMs) - startOfDay(us / 1000)) / 86_400_000);
  if (days <= 0) return "Today";
  if (days === 1) return "Yesterday";
  if (days < 7) return new Intl.DateTimeFormat("en-GB", {weekday: "long"}).format(us / 1000);
  return DATE.format(us / 1000);
}

/** The local calendar day of a moment, to group bubbles under day headings. */
export function dayKey(us) {
  return startOfDay(us / 1000);
}

/** "last seen just now" / "last seen 14:05" / "last seen Tue" / "last seen 21 Nov 2026". */
export function lastSeenLabel(us) {
  const label = ageLabel(us);
  return label === "just now" ? "last seen just now" : `last seen ${label}`;
}
