// One message on screen: its bubble, its time, and for own messages the ticks of its state.

import {ME, nameOf, others, state} from "../state.js";
import {discard, retry} from "../sync.js";
import {ageLabel, dayKey, fullLabel} from "../time.js";
import {el, hash, icon} from "../ui.js";
import {DELETED} from "../db.js";
import {linkify} from "../linkify.js";
import {attachmentsNode} from "./media.js";
import {menuButton, quoteNode, reactionsNode} from "./refs.js";

const STATE_LABEL = {pending: "waiting to be sent", sent: "sent", received: "delivered",
                     read: "read", failed: "not sent"};

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

/** The <li> of `msg` in `conv`; `prev` is the message above it (runs of one sender share a name). */
export function bubble(msg, prev, conv) {
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
  // SPEC 13: unsent, a reply's quote; links clickable; dir="auto" for right-to-left text.
  if (msg.deleted) {
    box.classList.add("deleted");
    box.append(el("p", {class: "body deleted", text: DELETED}));
  } else {
    if (msg.replyTo) box.append(quoteNode(msg));
    if (msg.atts?.length) {
      box.classList.add("with-atts");
      box.append(attachmentsNode(msg));
    }
    if (msg.body || !msg.atts?.length) box.append(el("p", {class: "body", attrs: {dir: "auto"}}, ...linkify(msg.body)));
  }
  const meta = el("span", {class: "meta"},
                  el("time", {text: ageLabel(msg.us), data: {us: String(msg.us)},
                              attrs: {title: timeTitle(msg), datetime: new Date(msg.us / 1000).toISOString()}}));
  if (msg.editedUs && !msg.deleted) {
    meta.prepend(el("span", {class: "edited", text: "edited", attrs: {title: `Edited ${fullLabel(msg.editedUs)}`}}));
  }
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
  li.append(el("div", {class: "bubble-row"}, box, menuButton(msg, conv)));
  const reactions = reactionsNode(msg);
  if (reactions) li.append(reactions);
  if (mine && msg.expired && msg.state !== "failed") {
    li.append(el("div", {class: "failed-note"},
      el("span", {text: "Not delivered to everyone: it waited too long on the server."})));
  }
  if (mine && msg.state === "failed") {
    li.append(el("div", {class: "failed-note"},
      el("span", {text: `${msg.expired ? "Not delivered" : "Not sent"}: ${msg.error || "refused"}`}),
      el("button", {class: "link-btn", text: "Retry", attrs: {type: "button"},
                    on: {click: () => retry(msg)}}),
      el("button", {class: "link-btn", text: "Delete", attrs: {type: "button"},
                    on: {click: () => discard(msg)}})));
  }
  return li;
}

/** The full time; for a message sent long after it was written (re-stamped), both. */
function timeTitle(msg) {
  if (!msg.writtenUs || msg.writtenUs === msg.us) return fullLabel(msg.us);
  return `Sent ${fullLabel(msg.us)} (written ${fullLabel(msg.writtenUs)})`;
}

function hueOf(text) {
  return hash(`p:${text}`) % 360; // the same colour as the sender's avatar
}

/** What a bubble's looks depend on, besides the conversation: reuse it while this is the same. */
export function bubbleKey(msg, prev) {
  return `${msg.id}|${prev?.id || ""}|${msg.state || ""}|${(msg.rcv || []).length}|${msg.expired ? 1 : 0}|${msg.files || ""}${state.unkept.has(msg.id) ? " unkept" : ""}|${msg.editedUs || ""}|${msg.deleted ? 1 : 0}|${JSON.stringify(msg.reactions || {})}`;
}
