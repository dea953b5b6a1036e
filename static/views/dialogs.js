// The dialogs: a new group, the contacts and blocked people, and the info panel of the open
// conversation (contact name, block; a group's panel is views/groupinfo.js; the rooms are
// views/rooms.js).

import * as actions from "../actions.js";
import {ME, nameOf, normalisePhone, on, state, titleOf} from "../state.js";
import {refreshContacts} from "../sync.js";
import {lastSeenLabel} from "../time.js";
import {avatar, confirmStep, dialogError, el, toast} from "../ui.js";
import {closeConv, openConv, roomIsPrivate} from "./conversation.js";
import {renderGroupInfo} from "./groupinfo.js";

const $ = (id) => document.getElementById(id);

/** Bind the buttons that open the dialogs, their forms, and their close buttons. */
export function mount() {
  on("contacts", () => { if ($("dlg-contacts").open) renderContacts(); });
  $("conv-info").addEventListener("click", openInfoDialog);
  $("new-group").addEventListener("click", openGroupDialog);
  $("group-form").addEventListener("submit", createGroup);
  $("show-contacts").addEventListener("click", openContactsDialog);
  $("contact-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    // Issue 18, defects 1 and 4: the number as typed is accepted, an error shows in the dialog,
    // and the fields keep what was typed until the contact is saved.
    const {phone, error} = normalisePhone($("contact-phone").value);
    if (error) return invalid($("contact-phone"), error);
    $("contact-phone").removeAttribute("aria-invalid");
    if (await actions.addContact(phone, $("contact-name").value.trim())) $("contact-form").reset();
    return undefined;
  });
  for (const button of document.querySelectorAll("dialog [data-close]")) {
    button.addEventListener("click", () => button.closest("dialog").close());
  }
}

/** A phone field's typed text is no number: say why in its dialog, keep it, focus it. */
function invalid(input, error) {
  input.setAttribute("aria-invalid", "true");
  input.focus();
  dialogError(input.closest("dialog"), error);
}

/** Block `phone` once the person confirms (issue 18, defect 3); resolves true when blocked. */
async function confirmBlock(phone) {
  const ok = await confirmStep({
    title: `Block ${nameOf(phone)}?`,
    text: "Their messages and calls no longer reach you, and they are not told. You can unblock them later.",
    ok: "Block"});
  if (!ok) return false;
  await actions.block(phone);
  return true;
}

/** Message someone (a contact's "Message" button): start the dialogue and open it. */
async function startDialogue(phone) {
  const id = await actions.startDialogue(phone);
  return id ? openConv(id) : undefined;
}

function presenceText(phone) {
  const p = state.presence.get(phone);
  if (p?.online) return "online";
  if (p?.lastSeenUs) return lastSeenLabel(p.lastSeenUs);
  return "";
}

// -- a new group ----------------------------------------------------------------------------

function knownPeople() {
  const phones = new Set(state.contacts.keys());
  for (const c of state.convs.values()) if (c.kind === "personal") phones.add(c.ref);
  phones.delete(ME);
  return [...phones].filter((p) => !state.blocked.has(p))
    .sort((a, b) => nameOf(a).localeCompare(nameOf(b)));
}

function openGroupDialog() {
  const people = knownPeople();
  $("group-people").replaceChildren(...people.map((phone) => el("li", {},
    el("label", {class: "pick"},
       el("input", {attrs: {type: "checkbox", value: phone, name: "participant"}}),
       avatar(nameOf(phone), `p:${phone}`),
       el("span", {class: "pick-text"}, el("span", {text: nameOf(phone)}),
          el("span", {class: "muted", text: phone}))))));
  $("group-people-empty").hidden = people.length > 0;
  $("group-form").reset();
  $("dlg-group").showModal();
}

async function createGroup(ev) {
  ev.preventDefault();
  const name = $("group-name").value.trim();
  const picked = [...$("group-people").querySelectorAll("input:checked")].map((i) => i.value);
  // Numbers as people type them ("+44 7700 900123"): separated by commas, semicolons or lines.
  const typed = [];
  for (const part of $("group-phones").value.split(/[,;\n]+/).map((p) => p.trim()).filter(Boolean)) {
    const {phone, error} = normalisePhone(part);
    if (error) return invalid($("group-phones"), error);
    typed.push(phone);
  }
  $("group-phones").removeAttribute("aria-invalid");
  const participants = [...new Set([...picked, ...typed])];
  if (!name) return toast("Give the group a title");
  const id = await actions.createGroup(name, participants);
  if (!id) return undefined;
  $("dlg-group").close();
  return openConv(id);
}

// -- contacts and blocks --------------------------------------------------------------------

async function openContactsDialog() {
  $("contact-form").reset();
  renderContacts();
  $("dlg-contacts").showModal();
  refreshContacts();
}

function renderContacts() {
  const items = [...state.contacts.values()].map((c) => el("li", {class: "pick"},
    avatar(c.name, `p:${c.phone}`),
    el("span", {class: "pick-text"}, el("span", {text: c.name}),
       el("span", {class: "muted", text: [c.phone, presenceText(c.phone)].filter(Boolean).join(" · ")})),
    el("button", {class: "btn", text: "Message", attrs: {type: "button"}, on: {click: () => {
      $("dlg-contacts").close();
      startDialogue(c.phone);
    }}}),
    el("button", {class: "btn", text: "Remove", attrs: {type: "button",
                                                        "aria-label": `Remove ${c.name}`},
                  on: {click: () => actions.removeContact(c.phone)}}),
    // A blocked contact is unblocked from here too (issue 18, defect 8), blocked after a question.
    state.blocked.has(c.phone)
      ? el("button", {class: "btn", text: "Unblock", attrs: {type: "button",
                                                           "aria-label": `Unblock ${c.name}`},
                      on: {click: () => actions.unblock(c.phone)}})
      : el("button", {class: "btn danger", text: "Block", attrs: {type: "button",
                                                                  "aria-label": `Block ${c.name}`},
                      on: {click: () => confirmBlock(c.phone)}})));
  $("contact-list").replaceChildren(...items);
  $("contact-list-empty").hidden = items.length > 0;
  const blocked = [...state.blocked].map((phone) => el("li", {class: "pick"},
    avatar(nameOf(phone), `p:${phone}`),
    el("span", {class: "pick-text"}, el("span", {text: nameOf(phone)}),
       el("span", {class: "muted", text: phone})),
    el("button", {class: "btn", text: "Unblock", attrs: {type: "button",
                                                         "aria-label": `Unblock ${nameOf(phone)}`},
                  on: {click: () => actions.unblock(phone)}})));
  $("blocked-list").replaceChildren(...blocked);
  $("blocked-list-empty").hidden = blocked.length > 0;
}

// -- the open conversation's info -----------------------------------------------------------

function openInfoDialog() {
  const conv = state.convs.get(state.open);
  if (!conv) return;
  $("dlg-info-title").textContent = titleOf(conv);
  const body = $("info-body");
  body.replaceChildren();
  if (conv.kind === "personal") {
    const contact = state.contacts.get(conv.ref);
    const nameInput = el("input", {attrs: {maxlength: "64", required: true,
                                           value: contact?.name || state.names.get(conv.ref) || ""}});
    body.append(
      el("p", {class: "muted", text: [conv.ref, presenceText(conv.ref)].filter(Boolean).join(" · ")}),
      el("form", {class: "inline-form", on: {submit: async (ev) => {
        ev.preventDefault();
        // The list and the header follow the contact's name through the "list"/"header" events.
        await actions.addContact(conv.ref, nameInput.value.trim());
        openInfoDialog();
      }}}, el("label", {text: contact ? "Contact name " : "Save as contact, name "}, nameInput),
         el("button", {class: "btn primary", text: contact ? "Rename" : "Add to contacts",
                       attrs: {type: "submit"}})));
    if (conv.ref !== ME) {
      const blocked = state.blocked.has(conv.ref);
      body.append(el("p", {}, el("button", {
        class: `btn${blocked ? "" : " danger"}`, text: blocked ? "Unblock" : "Block",
        attrs: {type: "button"},
        on: {click: async () => {
          if (blocked) await actions.unblock(conv.ref);
          else if (!await confirmBlock(conv.ref)) return;
          openInfoDialog();
        }},
      })));
    }
  } else if (conv.kind === "group") {
    renderGroupInfo(conv, body);
  } else {
    const kind = roomIsPrivate(conv) ? "Private rooms" : "Public rooms";
    body.append(el("p", {class: "muted", text: `${kind} keep their latest messages on the server; ` +
                                              "this device keeps everything it has seen."}),
                el("p", {}, el("button", {class: "btn danger", text: "Leave room",
                  attrs: {type: "button"}, on: {click: () => leaveRoom(conv)}})));
  }
  if (!$("dlg-info").open) $("dlg-info").showModal();
}

async function leaveRoom(conv) {
  $("dlg-info").close();
  await actions.leaveRoom(conv);
  closeConv();
}
