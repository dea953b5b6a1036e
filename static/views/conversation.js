// The open conversation: its header, its note (left, gone, locked, blocked), the messages with
// their history paging, and the compose box (drafts, typing, sending).

import {joinRoom} from "../actions.js";
import {attachmentsLabel} from "../attachments.js";
import {
  ME, nameOf, on, page, pathOf, saveConv, setOpen, state, titleOf, viewing,
} from "../state.js";
import * as sync from "../sync.js";
import {dayKey, dayLabel, lastSeenLabel} from "../time.js";
import {avatar, el} from "../ui.js";
import {MAX_ATTACHMENTS, readyCount, sayInTray, takeUploads, uploading} from "./attach.js";
import {bubble, bubbleKey} from "./bubble.js";
import {systemLine, withEvents} from "./groupinfo.js";
import {composeContext, endCompose} from "./refs.js";
import {showNote as sayTooLong} from "./longtext.js";

const PAGE = 50;
export const EARLIER = "Messages from before this device was added are on your other devices";
const $ = (id) => document.getElementById(id);
const growable = CSS.supports("field-sizing", "content");

let view = null;             // {id, messages: [...], nodes: Map(id -> li), hasMore, loading}
const drafts = new Map();    // conversation id -> unsent text

/** Follow the state's events and bind the compose box, the back button and the scroller. */
export function mount() {
  on("header", (id) => { if (state.open && (id === null || id === state.open)) renderHeader(); });
  on("note", (id) => {
    if (!state.open || (id !== null && id !== state.open)) return;
    renderHeader();  // a room found locked is private (issue 18, defect 2)
    renderConvState();
  });
  on("message", updateBubble);
  on("receipts", refreshOwnBubbles);
  on("incoming", showIncoming);
  on("outgoing", (record) => {
    if (view?.id !== record.conv || record.act) return; // an edit, unsend or reaction: no bubble
    insertIntoView(record);
    renderMessages("append");
  });
  on("removed", (msg) => {
    if (view?.id !== msg.conv) return;
    view.messages = view.messages.filter((m) => m.id !== msg.id);
    renderMessages("update");
  });
  on("elsewhere", (id) => { reload(id).catch(console.error); });
  on("events", (id) => { if (view?.id === id) renderMessages("append"); });

  $("compose").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const id = state.open;
    const text = $("text");
    const body = text.value;
    // SPEC 13: the compose box edits one of my messages (text only), or replies to one.
    const ctx = composeContext(id);
    if (ctx?.kind === "edit") {
      if (!body.trim() || body === ctx.msg.body) return;
      text.value = "";
      autosize();
      endCompose(id);
      await sync.act(ctx.msg, "edit", body);
      return;
    }
    if (uploading(id)) {
      sayInTray("Still uploading: send once the uploads are done, or cancel them.");
      return;
    }
    const count = readyCount(id);
    if (count > MAX_ATTACHMENTS) {
      sayInTray(`A message carries at most ${MAX_ATTACHMENTS} photos or files: remove some.`);
      return;
    }
    if (!body.trim() && !count) return;
    if (sayTooLong(body)) return;  // never cut: the note offers to split it (issue 18, defect 6)
    text.value = "";
    autosize();
    const {results, giveBack} = takeUploads(id);
    const sent = await sync.send(id, body.trim() ? body : "", results, {replyTo: ctx?.msg});
    if (sent && ctx) endCompose(id);
    giveBack(sent);
    // Not kept (the storage is full): the text comes back unless something new was typed.
    if (!sent && state.open === id && !text.value) text.value = body;
  });
  $("text").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      $("compose").requestSubmit();
    } else if (ev.key === "Escape" && $("app").dataset.view === "conv") {
      closeConv();
    }
  });
  const stillTyping = () => !!$("text").value;
  $("text").addEventListener("input", () => {
    autosize();
    if (stillTyping()) sync.sendTyping(stillTyping);
  });
  $("back").addEventListener("click", () => closeConv());
  $("scroller").addEventListener("scroll", () => {
    if ($("scroller").scrollTop < 200) loadOlder();
  }, {passive: true});
}

// -- opening and closing --------------------------------------------------------------------

function keepDraft() {
  if (state.open) drafts.set(state.open, $("text").value);
  sync.stopTyping();
}

/** Show conversation `id` (its latest page of messages); `push` adds it to the browser history. */
export async function openConv(id, {push = true} = {}) {
  const conv = state.convs.get(id) || await saveConv(id, () => {});
  if (conv.left) await saveConv(id, (c) => { c.left = false; });
  keepDraft();
  setOpen(id);
  $("text").value = drafts.get(id) || "";
  sayTooLong($("text").value);
  autosize();
  const messages = await page(id, Infinity, PAGE);
  view = {id, messages, nodes: new Map(), hasMore: messages.length === PAGE, loading: false};
  $("app").dataset.view = "conv";
  $("placeholder").hidden = true;
  $("conv-head").hidden = false;
  $("scroller").hidden = false;
  renderHeader();
  renderConvState();
  renderMessages("bottom");
  if (push && location.pathname !== pathOf(conv)) history.pushState({id}, "", pathOf(conv));
  sync.wake(id);
  if (conv.kind === "group") sync.refreshGroup(conv.ref);
  await fillUp();
  markRead(id);
  if (!matchMedia("(pointer: coarse)").matches) $("text").focus();
}

/** Back to the list alone (on a phone, the list screen). */
export function closeConv({push = true} = {}) {
  keepDraft();
  view = null;
  setOpen(null);
  $("app").dataset.view = "list";
  $("placeholder").hidden = false;
  $("conv-head").hidden = true;
  $("scroller").hidden = true;
  $("compose").hidden = true;
  $("conv-note").hidden = true;
  $("messages").replaceChildren();
  if (push && location.pathname !== "/chat") history.pushState({}, "", "/chat");
  const current = document.querySelector(".conv[aria-current='true']") ||
    document.querySelector(".conv");
  current?.focus();
}

/** Join room `name` (with its password when private) and open it. */
export async function joinAndOpen(name, password) {
  const id = await joinRoom(name, password);
  return id ? openConv(id) : undefined;
}

/** The conversation is on screen: tell the senders, clear the badge. */
export function markRead(id) {
  if (!id || !viewing(id) || !view || view.id !== id) return undefined;
  return sync.markRead(id, view.messages);
}

// -- header and note ------------------------------------------------------------------------

/** The open conversation's title, avatar, and its line below: typing, presence, members. */
export function renderHeader() {
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
    sub.textContent = roomIsPrivate(conv) ? "private room" : "public room";
  }
}

/** Whether room `conv` needs a password (issue 18, defect 2): as its join said, else as the
 *  server lists it, else when it asks for one. */
export function roomIsPrivate(conv) {
  if (typeof conv.private === "boolean") return conv.private;
  const listed = state.rooms.find((r) => r.room_name === conv.ref);
  return listed ? !!listed.private : conv.note === "locked";
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
                                       placeholder: "Room password", autocomplete: "off"}});
    const form = el("form", {class: "inline-form row", on: {submit: (ev) => {
      ev.preventDefault();
      joinAndOpen(conv.ref, input.value);
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

// -- the messages ---------------------------------------------------------------------------

function showIncoming(fresh) {
  const shown = fresh.filter((m) => view && m.conv === view.id);
  if (!shown.length) return;
  for (const m of shown) insertIntoView(m);
  const last = shown.at(-1);
  if (!last.mine) $("announce").textContent = `${nameOf(last.from)}: ${last.body || attachmentsLabel(last.atts)}`;
  renderMessages("append");
  markRead(state.open);
}

/** Another tab changed conversation `id`: read its messages again from the device. */
async function reload(id) {
  if (view?.id !== id) return;
  const current = view;
  const messages = await page(id, Infinity, Math.max(PAGE, current.messages.length));
  if (view !== current) return;
  current.messages = messages;
  renderMessages("append");
  renderHeader();
}

function insertIntoView(msg) {
  const list = view.messages;
  let i = list.length;
  while (i > 0 && list[i - 1].us > msg.us) i -= 1;
  if (list[i - 1]?.id === msg.id) list[i - 1] = msg; else list.splice(i, 0, msg);
}

/**
 * Rebuild the list from view.messages, reusing bubbles. `mode`: "bottom" scrolls to the end;
 * "prepend" keeps what is on screen in place (older history above); "append" follows the end
 * only when the reader was already there.
 */
function renderMessages(mode) {
  const conv = state.convs.get(view.id);
  const scroller = $("scroller");
  const fromBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight;
  const nodes = [];
  let prev = null;
  const keep = new Map();
  // A group's events (added, left, renamed...) are lines among its messages, by time.
  for (const msg of withEvents(view.messages, conv, view.hasMore)) {
    if (!prev || dayKey(prev.us) !== dayKey(msg.us)) {
      nodes.push(el("li", {class: "day", attrs: {role: "separator"}},
                    el("span", {text: dayLabel(msg.us)})));
    }
    if (msg.sys) {
      nodes.push(systemLine(msg));
      prev = msg;
      continue;
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
  // The beginning of what this device has; on a device added later (SPEC 7), where the rest is.
  const top = $("history-top");
  top.textContent = conv?.earlier ? EARLIER : "Beginning of the history on this device";
  top.hidden = view.hasMore || !(view.messages.length || conv?.earlier);
  const lastMine = view.messages.at(-1)?.mine;
  if (mode === "bottom" || (mode === "append" && (fromBottom < 80 || lastMine))) {
    scroller.scrollTop = scroller.scrollHeight;
  } else if (mode === "prepend") {
    scroller.scrollTop = scroller.scrollHeight - scroller.clientHeight - fromBottom;
  }
}

function updateBubble(msg) {
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
  if (!view || view.id !== id) return;
  for (const msg of view.messages) if (msg.mine) updateBubble(msg);
}

/** Load the page of history above; resolves when it is on screen (one load at a time). */
function loadOlder() {
  const current = view;
  if (!current || !current.hasMore) return Promise.resolve();
  current.loading ||= (async () => {
    const oldest = current.messages[0]?.us ?? Infinity;
    const older = await page(current.id, oldest, PAGE);
    if (view !== current) return;
    current.hasMore = older.length === PAGE;
    current.messages.unshift(...older);
    renderMessages("prepend");
  })().finally(() => { current.loading = null; });
  return current.loading;
}

/**
 * Open conversation `convId` at message `msgId` (a reply's quote, a search result): older pages
 * load until it is there; it is scrolled to the middle and highlighted for a moment. Resolves
 * false when this device does not have it.
 */
export async function reveal(convId, msgId) {
  if (view?.id !== convId) await openConv(convId);
  const current = view;
  while (current && view === current && !current.nodes.has(msgId) && current.hasMore) await loadOlder();
  const node = current?.nodes.get(msgId);
  if (!node || view !== current) return false;
  node.scrollIntoView({block: "center"});
  for (const old of document.querySelectorAll("#messages .msg.highlight")) old.classList.remove("highlight");
  node.classList.add("highlight");
  setTimeout(() => node.classList.remove("highlight"), 2500);
  node.querySelector(".quote, .msg-more")?.focus({preventScroll: true});
  return true;
}

/** Load older pages until the screen is full (or the history ends). */
async function fillUp() {
  const scroller = $("scroller");
  while (view?.hasMore && scroller.scrollHeight <= scroller.clientHeight + 40) {
    await loadOlder();
  }
}

function autosize() {
  if (growable) return;
  const text = $("text");
  text.style.height = "auto";
  text.style.height = `${Math.min(text.scrollHeight, 160)}px`;
}
