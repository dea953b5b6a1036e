// The room catalogue (#dlg-rooms, SPEC 13): search rooms by name, filter them by category (the
// categories of the rooms found so far), see which are private and how many people are in
// each now; join or open one, save one (saved rooms are in the conversation list on every
// device), close one's own room (asked first); create a room with a category, or join one by
// name. Errors are shown in the dialog, next to what they concern: a toast would sit behind it.

import * as actions from "../actions.js";
import {on, state} from "../state.js";
import {avatar, confirmStep, el, icon, showError} from "../ui.js";
import {joinAndOpen, openConv} from "./conversation.js";

const $ = (id) => document.getElementById(id);
// Typing in the search box asks the server once the typing pauses.
const SEARCH_DELAY_MS = 250;

let rooms = [];                // the rooms of the last answer, as the server sent them
const categories = new Set();  // every category seen while the dialog is open
let asked = 0;                 // the number of the latest request: older answers are dropped
let searchTimer = null;

/** Bind the Rooms button, the search box and category filter, and the two forms. */
export function mount() {
  $("show-rooms").addEventListener("click", openCatalogue);
  $("room-search").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(load, SEARCH_DELAY_MS);
  });
  $("room-category").addEventListener("change", load);
  $("room-filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    clearTimeout(searchTimer);
    load();
  });
  $("room-form").addEventListener("submit", createRoom);
  $("room-join-form").addEventListener("submit", joinByName);
  // Joined, left or closed elsewhere: the buttons follow.
  on("list", () => { if ($("dlg-rooms").open) render(); });
}

/** Open the catalogue: every room (newest first), no filter. */
export function openCatalogue() {
  $("room-form").reset();
  $("room-join-form").reset();
  $("room-search").value = "";
  categories.clear();
  fillCategories("");
  showError($("room-error"), "");
  showError($("room-create-error"), "");
  $("room-status").textContent = "";
  rooms = [];
  render();
  $("dlg-rooms").showModal();
  return load();
}

/** Ask the server for the rooms matching the search box and the category. */
async function load() {
  const n = ++asked;
  const q = $("room-search").value.trim();
  const category = $("room-category").value;
  $("room-list").setAttribute("aria-busy", "true");
  const r = await actions.findRooms(q, category);
  if (n !== asked) return; // a newer search is on its way
  $("room-list").setAttribute("aria-busy", "false");
  showError($("room-error"), r.ok ? "" : r.error);
  if (!r.ok) return;
  rooms = r.rooms;
  for (const room of rooms) if (room.category) categories.add(room.category);
  fillCategories(category);
  render();
  const filtered = q || category;
  $("room-status").textContent = !rooms.length ? "" : rooms.length === 1 ? "1 room"
    : `${rooms.length} rooms${filtered ? "" : ", newest first"}`;
  $("room-list-empty").textContent = filtered ? "No rooms match." : "No rooms yet: create the first one.";
}

/** The category filter's choices (and the create form's suggestions), keeping `selected`. */
function fillCategories(selected) {
  const names = [...categories].sort((a, b) => a.localeCompare(b));
  if (selected && !categories.has(selected)) names.unshift(selected);
  $("room-category").replaceChildren(
    el("option", {text: "All categories", attrs: {value: ""}}),
    ...names.map((c) => el("option", {text: c, attrs: {value: c}})));
  $("room-category").value = selected;
  $("room-categories").replaceChildren(...names.map((c) => el("option", {attrs: {value: c}})));
}

function joinedHere(name) {
  const conv = state.convs.get(`r:${name}`);
  return !!conv && !conv.left && !conv.note;
}

function render() {
  $("room-list").replaceChildren(...rooms.map(roomRow));
  $("room-list-empty").hidden = rooms.length > 0;
}

/** One room: name, private or public, category, how many are in it now; its buttons. */
function roomRow(room) {
  const name = room.room_name;
  const id = `r:${name}`;
  const joined = joinedHere(name);
  const online = Number.isInteger(room.online) ? room.online : 0;
  const kind = room.private
    ? el("span", {class: "room-kind private"}, icon("lock"), el("span", {text: "private room"}))
    : el("span", {class: "room-kind", text: "public room"});
  const meta = el("span", {class: "muted room-meta"}, kind,
                  room.category ? el("span", {class: "room-category", text: room.category}) : null,
                  el("span", {class: "room-online", text: `${online} online`}));
  // Its creator enters a private room without the password.
  const locked = room.private && !room.mine;
  const password = locked && !joined
    ? el("input", {attrs: {type: "password", placeholder: "password", autocomplete: "off",
                           "aria-label": `Password of #${name}`}})
    : null;
  const join = el("button", {
    class: `btn${joined ? "" : " primary"}`, text: joined ? "Open" : "Join",
    attrs: {type: "button", "aria-label": `${joined ? "Open" : "Join"} #${name}`},
    on: {click: () => joinRow(room, joined, password)},
  });
  const save = el("button", {
    class: `icon-btn room-save${room.saved ? " is-saved" : ""}`,
    attrs: {type: "button", "aria-pressed": room.saved ? "true" : "false",
            "aria-label": `Save #${name}`, title: room.saved ? "Saved: in your list on every device" : "Save"},
    on: {click: () => toggleSaved(room)},
  }, icon("star"));
  const close = room.mine
    ? el("button", {class: "btn danger", text: "Close",
                    attrs: {type: "button", "aria-label": `Close #${name}`},
                    on: {click: () => closeRoom(room)}})
    : null;
  if (password) {
    password.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter") {
        ev.preventDefault();
        joinRow(room, joined, password);
      }
    });
  }
  return el("li", {class: "pick room", data: {room: name}},
            el("span", {class: "room-main"},
               avatar(name, id, "room"),
               el("span", {class: "pick-text"}, el("span", {class: "room-name", text: `#${name}`}), meta)),
            el("span", {class: "room-actions"}, password, join, save, close));
}

async function joinRow(room, joined, password) {
  const name = room.room_name;
  if (joined) {
    $("dlg-rooms").close();
    return openConv(`r:${name}`);
  }
  if (password && !password.value) {
    showError($("room-error"), `#${name} is private: give its password.`);
    password.focus();
    return undefined;
  }
  $("dlg-rooms").close();
  return joinAndOpen(name, password ? password.value : undefined);
}

async function toggleSaved(room) {
  const saved = !room.saved;
  const r = await actions.saveRoom(room.room_name, saved);
  showError($("room-error"), r.ok ? "" : r.error);
  if (!r.ok) return;
  room.saved = saved;
  $("room-status").textContent = saved
    ? `Saved #${room.room_name}: it is in your conversations on every device`
    : `#${room.room_name} is no longer saved`;
  render();
}

async function closeRoom(room) {
  const name = room.room_name;
  const ok = await confirmStep({
    title: `Close #${name}?`,
    text: "The room and its history are deleted from the server, and everyone in it is " +
          "disconnected. This cannot be undone.",
    ok: "Close room"});
  if (!ok) return;
  const r = await actions.closeRoom(name);
  showError($("room-error"), r.ok ? "" : r.error);
  if (!r.ok) return;
  rooms = rooms.filter((x) => x !== room);
  $("room-status").textContent = `#${name} was closed`;
  render();
}

async function createRoom(ev) {
  ev.preventDefault();
  const name = $("room-name").value.trim();
  const category = $("room-new-category").value.trim();
  const r = await actions.createRoom(name, $("room-password").value, category);
  // The reason stays in the dialog, and what was typed with it.
  showError($("room-create-error"), r.ok ? "" : r.error);
  if (!r.ok) return undefined;
  $("dlg-rooms").close();
  return joinAndOpen(name);
}

/** A room by name (one not found above), with its password when private; without one, a
 *  private room's conversation asks for it ("locked"). */
async function joinByName(ev) {
  ev.preventDefault();
  const name = $("room-join-name").value.trim();
  const password = $("room-join-password").value;
  $("dlg-rooms").close();
  return joinAndOpen(name, password || undefined);
}
