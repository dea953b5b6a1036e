// Replies, edits, unsending and reactions on screen (SPEC 13): the quote above a reply (a button
// that scrolls to the original), the "edited" mark, "This message was deleted", the reactions
// under a bubble (counts; who, on hover, focus and in the menu), the message menu with the
// emoji picker, the reply/edit bar above the compose box, and swiping a bubble right to reply
// on a touch screen. The records and the frames are references.js, db.js and sync.js.

import {DELETED} from "../db.js";
import {COMMON_REACTIONS, isOneEmoji, refId} from "../references.js";
import {ME, nameOf, on, state} from "../state.js";
import * as sync from "../sync.js";
import {confirmStep, el, icon} from "../ui.js";
import {reveal} from "./conversation.js";

const $ = (id) => document.getElementById(id);
const SWIPE_PX = 64;           // a swipe this far right (and mostly sideways) is a reply
const composing = new Map();   // conversation id -> {kind: "reply" | "edit", msg}
let menu = null;               // the open message menu: {node, msg, anchor}

/** Bind the compose bar, the menu's closing, swiping, and follow changed originals. */
export function mount() {
  const bar = el("div", {class: "compose-ref", attrs: {id: "compose-ref", hidden: true}});
  $("compose").prepend(bar);
  on("open", () => { closeMenu(); renderBar(); });
  // A quote follows its original (edited, unsent, or arrived after the reply).
  on("message", (msg) => {
    for (const q of document.querySelectorAll(".quote[data-ref]")) {
      if (q.dataset.ref === msg.id) fillQuote(q, msg);
    }
  });
  on("incoming", (fresh) => {
    for (const msg of fresh) {
      for (const q of document.querySelectorAll(".quote[data-ref]")) {
        if (q.dataset.ref === msg.id) fillQuote(q, msg);
      }
    }
  });
  // Escape ends a reply or an edit before it closes anything else (capture: first).
  $("compose").addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && composing.has(state.open)) {
      ev.stopImmediatePropagation();
      ev.preventDefault();
      endCompose(state.open, {clear: composing.get(state.open).kind === "edit"});
    }
  }, {capture: true});
  document.addEventListener("pointerdown", (ev) => {
    if (menu && !menu.node.contains(ev.target) && !menu.anchor.contains(ev.target)) closeMenu();
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && menu) {
      ev.stopPropagation();
      const {anchor} = menu;
      closeMenu();
      anchor.focus();
    }
  }, {capture: true});
  window.addEventListener("resize", closeMenu);
  $("scroller").addEventListener("scroll", closeMenu, {passive: true});
  bindSwipe($("messages"));
}

// -- in a bubble ----------------------------------------------------------------------------

/** The quote above reply `msg`: a button that scrolls to the original (filled from the device). */
export function quoteNode(msg) {
  const id = refId(msg.conv, msg.replyTo);
  const q = el("button", {class: "quote", attrs: {type: "button"}, data: {ref: id},
                          on: {click: () => revealOriginal(msg.conv, id)}},
               el("span", {class: "quote-name", text: nameOf(msg.replyTo.from)}),
               el("span", {class: "quote-text", attrs: {dir: "auto"}, text: "…"}));
  state.db.message(id).then((orig) => fillQuote(q, orig)).catch(console.error);
  return q;
}

function fillQuote(q, orig) {
  const text = q.querySelector(".quote-text");
  q.classList.toggle("missing", !orig);
  if (!orig) {
    text.textContent = "The original message is not on this device";
    q.setAttribute("aria-label", "Reply to a message that is not on this device");
    return;
  }
  const shown = orig.deleted ? DELETED : orig.body || (orig.atts?.length ? "Photo or file" : "");
  text.textContent = shown;
  q.setAttribute("aria-label", `Reply to ${nameOf(orig.from)}: ${shown}. Show the original`);
}

async function revealOriginal(conv, id) {
  const found = await reveal(conv, id);
  if (!found) {
    const q = document.querySelector(`.quote[data-ref="${CSS.escape(id)}"]`);
    if (q) fillQuote(q, null);
  }
}

/** The reactions under `msg` (null when none): one button per emoji, its count and who. */
export function reactionsNode(msg) {
  const entries = Object.entries(msg.reactions || {}).filter(([, people]) => people.length);
  if (!entries.length || msg.deleted) return null;
  const row = el("div", {class: "reactions", attrs: {role: "group", "aria-label": "Reactions"}});
  for (const [emoji, people] of entries) {
    const mineToo = people.includes(ME);
    const who = people.map((p) => (p === ME ? "You" : nameOf(p))).join(", ");
    row.append(el("button", {
      class: `reaction${mineToo ? " mine" : ""}`,
      attrs: {type: "button", title: who, "aria-pressed": mineToo ? "true" : "false",
              "aria-label": `${emoji} ${people.length}: ${who}${mineToo ? " (tap to take yours back)" : ""}`},
      data: {emoji},
      // Mine: take it back (react_to with ""). Someone else's: react the same way.
      on: {click: () => sync.act(msg, "react", mineToo ? "" : emoji)},
    }, el("span", {class: "reaction-emoji", text: emoji}),
    el("span", {class: "reaction-count", text: String(people.length)}),
    el("span", {class: "reaction-who", attrs: {"aria-hidden": "true"}, text: who})));
  }
  return row;
}

/** The button that opens `msg`'s menu (none for an unsent message). */
export function menuButton(msg, conv) {
  if (msg.deleted) return null;
  return el("button", {class: "msg-more icon-btn", attrs: {type: "button", "aria-haspopup": "dialog",
                       "aria-label": "Message actions", title: "Reply, react, edit…"},
                       on: {click: (ev) => toggleMenu(msg, conv, ev.currentTarget)}}, icon("more"));
}

// -- the menu -------------------------------------------------------------------------------

function toggleMenu(msg, conv, anchor) {
  const same = menu?.msg.id === msg.id;
  closeMenu();
  if (!same) openMenu(msg, conv, anchor);
}

function closeMenu() {
  menu?.node.remove();
  menu = null;
}

/** May I edit or unsend `msg`? My own, shown, and known to the server or on its way there. */
function ownEditable(msg) {
  return (msg.mine || msg.from === ME) && !msg.deleted && msg.state !== "failed";
}

function openMenu(msg, conv, anchor) {
  const id = msg.conv;
  const error = el("p", {class: "form-error", attrs: {role: "alert", hidden: true}});
  const react = (emoji) => {
    closeMenu();
    sync.act(msg, "react", emoji);
  };
  const other = el("input", {attrs: {type: "text", "aria-label": "Any emoji", placeholder: "Other emoji",
                                     maxlength: "64", autocomplete: "off", inputmode: "text"}});
  const picker = el("div", {class: "react-row", attrs: {role: "group", "aria-label": "React"}},
    ...COMMON_REACTIONS.map((emoji) => el("button", {
      class: "react-pick", text: emoji, attrs: {type: "button", "aria-label": `React with ${emoji}`,
                                                 "aria-pressed": (msg.reactions?.[emoji] || []).includes(ME) ? "true" : "false"},
      on: {click: () => react((msg.reactions?.[emoji] || []).includes(ME) ? "" : emoji)}})));
  const form = el("form", {class: "react-other", on: {submit: (ev) => {
    ev.preventDefault();
    const emoji = other.value.trim();
    if (!isOneEmoji(emoji)) {
      error.textContent = "Type or paste one emoji (a single character, like 🎉).";
      error.hidden = false;
      other.setAttribute("aria-invalid", "true");
      other.focus();
      return;
    }
    react(emoji);
  }}}, other, el("button", {class: "btn", text: "React", attrs: {type: "submit"}}));
  other.addEventListener("input", () => {
    error.hidden = true;
    other.removeAttribute("aria-invalid");
  });
  const actions = el("div", {class: "menu-actions"},
    el("button", {class: "menu-item", text: "Reply", attrs: {type: "button"},
                  on: {click: () => { closeMenu(); startCompose(id, "reply", msg); }}}));
  if (ownEditable(msg)) {
    if (!msg.atts?.length || msg.body) {
      actions.append(el("button", {class: "menu-item", text: "Edit", attrs: {type: "button"},
                                   on: {click: () => { closeMenu(); startCompose(id, "edit", msg); }}}));
    }
    actions.append(el("button", {class: "menu-item danger", text: "Unsend", attrs: {type: "button"},
                                 on: {click: () => { closeMenu(); unsend(msg); }}}));
  }
  const who = Object.entries(msg.reactions || {}).map(([emoji, people]) =>
    el("li", {text: `${emoji} ${people.map((p) => (p === ME ? "You" : nameOf(p))).join(", ")}`}));
  const node = el("div", {class: "msg-menu", attrs: {role: "dialog", "aria-label": "Message actions"}},
    picker, form, error, actions,
    who.length ? el("ul", {class: "menu-who", attrs: {"aria-label": "Who reacted"}}, ...who) : null);
  if (conv.note) {
    // Nothing can be sent here (left, gone, locked): the menu only says who reacted.
    picker.remove();
    form.remove();
    actions.remove();
  }
  document.body.append(node);
  menu = {node, msg, anchor};
  place(node, anchor);
  (node.querySelector("button") || node).focus();
}

/** Put the menu next to its button, inside the window. */
function place(node, anchor) {
  const r = anchor.getBoundingClientRect();
  const w = node.offsetWidth;
  const h = node.offsetHeight;
  const left = Math.max(8, Math.min(r.right - w, window.innerWidth - w - 8));
  const below = r.bottom + 4;
  const top = below + h > window.innerHeight - 8 ? Math.max(8, r.top - h - 4) : below;
  node.style.setProperty("--menu-left", `${left}px`);
  node.style.setProperty("--menu-top", `${top}px`);
}

async function unsend(msg) {
  const ok = await confirmStep({title: "Unsend this message?",
                                text: "It is deleted for everyone: they see “This message was deleted”.",
                                ok: "Unsend"});
  if (ok) await sync.act(msg, "delete", "");
}

// -- replying and editing in the compose box ------------------------------------------------

/** Reply to (`kind` "reply") or edit ("edit") `msg` in conversation `id`: the bar says which. */
export function startCompose(id, kind, msg) {
  if (msg.deleted) return;
  composing.set(id, {kind, msg});
  if (id !== state.open) return;
  renderBar();
  const text = $("text");
  if (kind === "edit") {
    text.value = msg.body;
    text.dispatchEvent(new Event("input"));
  }
  text.focus();
  text.setSelectionRange(text.value.length, text.value.length);
}

/** What the compose box of conversation `id` does on Enter: {kind, msg} or undefined. */
export function composeContext(id) {
  return composing.get(id);
}

/** The reply or edit of conversation `id` is sent or cancelled; `clear` empties the text. */
export function endCompose(id, {clear = false} = {}) {
  composing.delete(id);
  if (id === state.open) {
    if (clear) $("text").value = "";
    renderBar();
  }
}

function renderBar() {
  const bar = $("compose-ref");
  const ctx = composing.get(state.open);
  bar.replaceChildren();
  bar.hidden = !ctx;
  if (!ctx) return;
  const {kind, msg} = ctx;
  const who = msg.from === ME ? "yourself" : nameOf(msg.from);
  const snippet = msg.body || (msg.atts?.length ? "Photo or file" : "");
  bar.append(
    icon(kind === "edit" ? "edit" : "reply"),
    el("span", {class: "compose-ref-text"},
       el("strong", {text: kind === "edit" ? "Editing your message" : `Replying to ${who}`}),
       el("span", {class: "ellipsis", attrs: {dir: "auto"}, text: snippet})),
    el("button", {class: "icon-btn", attrs: {type: "button", "aria-label": kind === "edit" ? "Cancel the edit" : "Cancel the reply",
                                              title: "Cancel (Escape)"},
                  on: {click: () => { endCompose(state.open, {clear: kind === "edit"}); $("text").focus(); }}},
       icon("close")));
}

// -- swiping right to reply (touch) ---------------------------------------------------------

function bindSwipe(list) {
  let start = null; // {x, y, li}
  list.addEventListener("touchstart", (ev) => {
    const li = ev.target.closest?.(".msg");
    if (ev.touches.length !== 1 || !li || li.querySelector(".body.deleted")) {
      start = null;
      return;
    }
    start = {x: ev.touches[0].clientX, y: ev.touches[0].clientY, li, dx: 0};
  }, {passive: true});
  list.addEventListener("touchmove", (ev) => {
    if (!start) return;
    const dx = ev.touches[0].clientX - start.x;
    const dy = ev.touches[0].clientY - start.y;
    if (Math.abs(dy) > 40 && Math.abs(dy) > Math.abs(dx)) {
      reset(start.li);
      start = null; // a scroll, not a swipe
      return;
    }
    start.dx = Math.max(0, Math.min(dx, 96));
    start.li.style.setProperty("--swipe", `${start.dx}px`);
    start.li.classList.add("swiping");
    start.li.classList.toggle("swipe-ready", start.dx >= SWIPE_PX);
  }, {passive: true});
  const end = async () => {
    if (!start) return;
    const {li, dx} = start;
    start = null;
    reset(li);
    if (dx < SWIPE_PX) return;
    const msg = await state.db.message(li.dataset.id);
    if (msg && !msg.deleted && !state.convs.get(msg.conv)?.note) startCompose(msg.conv, "reply", msg);
  };
  list.addEventListener("touchend", end);
  list.addEventListener("touchcancel", () => { if (start) reset(start.li); start = null; });
}

function reset(li) {
  li.classList.remove("swiping", "swipe-ready");
  li.style.removeProperty("--swipe");
}
