// The conversation list in the sidebar, and the form that starts a dialogue.

import {startDialogue} from "../actions.js";
import {mutedUntil, showUnread} from "../notify.js";
import {ME, nameOf, normalisePhone, on, state, titleOf} from "../state.js";
import {ageLabel} from "../time.js";
import {avatar, el, icon, showError} from "../ui.js";
import {openConv} from "./conversation.js";
import {eventText, lastEvent} from "./groupinfo.js";
import {mutedLabel} from "./mute.js";
import {filtering, listFilter} from "./search.js";

const $ = (id) => document.getElementById(id);

/** Follow the state's events; bind the start-a-dialogue form and the arrow keys. */
export function mount() {
  on("list", renderList);
  on("open", renderList);
  $("open-dialogue").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    // The number as people type it (issue 18, defect 4): normalised here, explained when it is
    // still no number, and kept in the box after any error.
    const input = $("peer");
    const {phone, error} = normalisePhone(input.value);
    showError($("peer-error"), error);
    input.toggleAttribute("aria-invalid", !!error);
    if (error) return;
    const id = await startDialogue(phone);
    if (!id) return;
    input.value = "";
    await openConv(id);
  });
  $("peer").addEventListener("input", () => {
    showError($("peer-error"), "");
    $("peer").removeAttribute("aria-invalid");
  });
  // Up and Down move between conversations in the list.
  $("conversations").addEventListener("keydown", (ev) => {
    if (ev.key !== "ArrowDown" && ev.key !== "ArrowUp") return;
    const rows = [...$("conversations").querySelectorAll(".conv")];
    const i = rows.indexOf(document.activeElement);
    const next = rows[i + (ev.key === "ArrowDown" ? 1 : -1)];
    if (next) {
      ev.preventDefault();
      next.focus();
    }
  });
}

function previewOf(conv) {
  const t = state.typing.get(conv.id);
  if (t) return {text: conv.kind === "personal" ? "typing…" : `${nameOf(t.who)} is typing…`,
                 typing: true};
  if (conv.note && conv.note !== "locked") return {text: conv.note};
  const ev = lastEvent(conv); // "Alice added Bob", newer than the last message
  if (ev) return {text: eventText(ev)};
  if (!conv.lastUs) {
    if (conv.kind === "room") return {text: "Room"};
    return {text: conv.earlier ? "Earlier messages are on your other devices" : "No messages yet"};
  }
  let prefix = "";
  if (conv.lastFrom === ME && conv.ref !== ME) prefix = "You: ";
  else if (conv.kind !== "personal") prefix = `${nameOf(conv.lastFrom)}: `;
  return {text: prefix + conv.lastText.replace(/\s+/g, " ")};
}

function sortedConvs() {
  return [...state.convs.values()]
    .filter((c) => !c.left && listFilter(c))
    .sort((a, b) => (b.lastUs || 0) - (a.lastUs || 0) ||
          titleOf(a).localeCompare(titleOf(b)));
}

/** Rebuild the list (newest first), keeping the focus on the same row; the tab title and the app
 *  badge count unread; a bell marks a muted conversation. */
export function renderList() {
  const list = $("conversations");
  const focused = document.activeElement?.closest?.(".conv")?.dataset.id;
  const rows = [];
  let unreadTotal = 0;
  for (const conv of sortedConvs()) {
    const title = titleOf(conv);
    const preview = previewOf(conv);
    const unread = conv.unread || 0;
    const muted = mutedUntil(conv.id) ? mutedLabel(conv.id) : "";
    unreadTotal += unread;
    const av = avatar(title, conv.id, conv.kind);
    if (conv.kind === "personal" && state.presence.get(conv.ref)?.online) {
      av.append(el("span", {class: "dot", attrs: {title: "online"}}));
    }
    const button = el("button", {
      class: `conv${unread ? " has-unread" : ""}`,
      attrs: {type: "button", "aria-current": state.open === conv.id ? "true" : "false",
              "aria-label": `${title}${unread ? `, ${unread} unread` : ""}${muted ? ", muted" : ""}`},
      data: {id: conv.id},
      on: {click: () => openConv(conv.id)},
    },
    av,
    el("span", {class: "conv-main"},
       el("span", {class: "conv-top"},
          el("span", {class: "conv-title ellipsis", text: title}),
          muted ? el("span", {class: "conv-muted", attrs: {title: muted}}, icon("bellOff")) : null,
          conv.kind === "room" && state.savedRooms.has(conv.ref)
            ? el("span", {class: "conv-saved", attrs: {title: "saved room"}}, icon("star")) : null,
          conv.lastUs ? el("time", {class: "conv-time", text: ageLabel(conv.lastUs),
                                    data: {us: String(conv.lastUs)}}) : null),
       el("span", {class: "conv-bottom"},
          el("span", {class: `conv-last ellipsis${preview.typing ? " typing" : ""}`,
                      text: preview.text, attrs: {dir: "auto"}}),
          unread ? el("span", {class: "badge", text: unread > 99 ? "99+" : String(unread)}) : null)));
    rows.push(el("li", {}, button));
  }
  list.replaceChildren(...rows);
  $("empty-list").hidden = rows.length > 0 || filtering();
  document.title = unreadTotal ? `(${unreadTotal}) Chat` : "Chat";
  showUnread(unreadTotal);
  if (focused) list.querySelector(`.conv[data-id="${CSS.escape(focused)}"]`)?.focus();
}
