// Search (issue 18), in this device's own history (IndexedDB, db.js `search`): the sidebar's box
// filters the conversation list by title or number and lists the messages of every conversation
// that contain the words; the header's search button looks in the open conversation. A result
// opens its conversation at the message (conversation.js `reveal`).

import {nameOf, on, state, titleOf} from "../state.js";
import {ageLabel} from "../time.js";
import {el} from "../ui.js";
import {reveal} from "./conversation.js";
import {renderList} from "./list.js";

const $ = (id) => document.getElementById(id);
const WAIT_MS = 150;       // typing pauses this long before the history is searched
const MIN_CHARS = 2;       // messages are searched from this many characters on
const SHOWN = 50;          // results shown at most

let filter = "";           // the sidebar's text, folded
let listTimer = null;
let convTimer = null;
let searchRun = 0;         // the latest search: older answers are dropped

/** Bind the sidebar's search box and the conversation's search bar. */
export function mount() {
  const box = $("list-filter");
  box.addEventListener("input", () => {
    filter = fold(box.value.trim());
    renderList();
    clearTimeout(listTimer);
    listTimer = setTimeout(() => searchAll(box.value.trim()).catch(console.error), WAIT_MS);
  });
  box.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && box.value) {
      ev.preventDefault();
      clearListFilter();
    } else if (ev.key === "ArrowDown") {
      ev.preventDefault();
      document.querySelector("#conversations .conv, #search-results .hit")?.focus();
    }
  });
  $("conv-search").addEventListener("click", () => toggleConvSearch());
  const input = $("conv-search-input");
  input.addEventListener("input", () => {
    clearTimeout(convTimer);
    convTimer = setTimeout(() => searchConv(input.value.trim()).catch(console.error), WAIT_MS);
  });
  $("conv-search-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    $("conv-search-results").querySelector(".hit")?.click();
  });
  $("conv-search-form").addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") {
      ev.preventDefault();
      ev.stopPropagation();
      toggleConvSearch(false);
      $("conv-search").focus();
    }
  });
  $("conv-search-close").addEventListener("click", () => toggleConvSearch(false));
  on("open", () => toggleConvSearch(false));
}

/** Whether conversation `conv` passes the sidebar's filter (its title, number or room name). */
export function listFilter(conv) {
  if (!filter) return true;
  return fold(titleOf(conv)).includes(filter) || conv.ref.toLowerCase().includes(filter);
}

/** Whether the sidebar's filter is on (the list may be empty because of it). */
export function filtering() {
  return !!filter;
}

function clearListFilter() {
  $("list-filter").value = "";
  filter = "";
  renderList();
  showResults($("search-results"), null);
}

async function searchAll(text) {
  const run = ++searchRun;
  const out = $("search-results");
  if ([...text].length < MIN_CHARS) {
    showResults(out, null, {empty: !!text && !$("conversations").children.length});
    return;
  }
  const found = await state.db.search(text, null, SHOWN);
  if (run !== searchRun) return;
  showResults(out, found, {text, across: true, empty: !$("conversations").children.length});
}

function toggleConvSearch(show) {
  const bar = $("conv-search-form");
  const open = show ?? bar.hidden;
  bar.hidden = !open;
  $("conv-search").setAttribute("aria-expanded", String(open));
  if (open) {
    $("conv-search-input").focus();
    $("conv-search-input").select();
  } else {
    $("conv-search-input").value = "";
    showResults($("conv-search-results"), null);
  }
}

async function searchConv(text) {
  const run = ++searchRun;
  const out = $("conv-search-results");
  const id = state.open;
  if (!id || [...text].length < MIN_CHARS) {
    showResults(out, null);
    return;
  }
  const found = await state.db.search(text, id, SHOWN);
  if (run !== searchRun || state.open !== id) return;
  showResults(out, found, {text});
}

/**
 * Show `found` (message records, newest first; null: no search) in list `out`, each a button
 * that opens its conversation at the message, the words found marked.
 */
function showResults(out, found, {text = "", across = false, empty = false} = {}) {
  const status = out.querySelector(".search-status") || el("p", {class: "search-status muted", attrs: {role: "status"}});
  const list = out.querySelector(".hits") || el("ul", {class: "hits"});
  if (!status.parentNode) out.append(status, list);
  list.replaceChildren();
  if (!found) {
    status.textContent = empty ? "No conversation matches." : "";
    out.hidden = !empty;
    return;
  }
  out.hidden = false;
  const count = found.length >= SHOWN ? `The latest ${SHOWN} messages` : `${found.length} message${found.length === 1 ? "" : "s"}`;
  status.textContent = found.length ? `${count} with “${text}”` : `No messages with “${text}” on this device.`;
  for (const msg of found) {
    const conv = state.convs.get(msg.conv);
    const who = msg.mine ? "You" : nameOf(msg.from);
    list.append(el("li", {}, el("button", {
      class: "hit", attrs: {type: "button"}, data: {id: msg.id},
      on: {click: () => reveal(msg.conv, msg.id)}},
      el("span", {class: "hit-top"},
         el("span", {class: "hit-title ellipsis", text: across && conv ? titleOf(conv) : who}),
         el("time", {class: "hit-time", text: ageLabel(msg.us), data: {us: String(msg.us)}})),
      el("span", {class: "hit-text", attrs: {dir: "auto"}},
         ...(across && conv?.kind !== "personal" ? [`${who}: `] : []), ...marked(msg.body, text)))));
  }
}

/** `body` around its first match of `text`, with the match in <mark> (text nodes only). */
function marked(body, text) {
  const folded = fold(body);
  const needle = fold(text);
  const at = folded.indexOf(needle);
  // The folded text is as long as the body only when folding removed nothing: else no mark.
  if (at < 0 || folded.length !== body.length) return [snippet(body, 0)];
  const start = Math.max(0, at - 40);
  return [
    (start ? "…" : "") + body.slice(start, at),
    el("mark", {text: body.slice(at, at + needle.length)}),
    snippet(body.slice(at + needle.length), 0, 120),
  ];
}

function snippet(text, from, size = 160) {
  const part = text.slice(from, from + size);
  return part.length < text.length - from ? `${part}…` : part;
}

/** As db.js folds the history: lower case, compatibility forms, no combining accents. */
function fold(text) {
  return String(text).normalize("NFKD").replace(/\p{M}/gu, "").toLowerCase();
}
