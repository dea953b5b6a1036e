// A group's info panel (inside #dlg-info): its members and admins, renaming it, adding and
// removing members, making one an admin, leaving it (asked first); and the group's events as
// system lines among its messages ("Alice added Bob", "Bob left", "Carol is now an admin",
// "Alice renamed the group to X"), from the `group_event` pushes that sync.js keeps in the
// group's record (`events`: [{us, actor, event, members, name}]).

import * as actions from "../actions.js";
import {ME, MY_NAME, nameOf, normalisePhone, on, state, titleOf} from "../state.js";
import {avatar, confirmStep, el, showError} from "../ui.js";

const $ = (id) => document.getElementById(id);

// The panel on screen: {id (conversation), members (ul), count, admin (was I one when drawn)}.
let panel = null;

/** Follow the group's changes while its panel is open (another admin renames it, someone
 *  leaves): the members and the title are drawn again, the forms keep what is typed. */
export function mount() {
  const follow = (id) => {
    if (!panel || !$("dlg-info").open || (id !== null && id !== panel.id)) return;
    const conv = state.convs.get(panel.id);
    if (!conv) return;
    // Made an admin (or no longer one) meanwhile: the forms change too.
    if (isAdmin(conv) !== panel.admin) renderGroupInfo(conv, $("info-body"));
    else drawMembers(conv);
  };
  on("header", follow);
  on("note", follow);
  $("dlg-info").addEventListener("close", () => { panel = null; });
}

function isAdmin(conv) {
  return (conv.admins || []).includes(ME) && !conv.note;
}

// -- system lines ---------------------------------------------------------------------------

function who(phone, capital) {
  if (phone === ME) return capital ? "You" : "you";
  return nameOf(phone);
}

/** "Bob", "Bob and Carol", "Bob, Carol and Dan". */
function joinNames(names) {
  if (names.length <= 1) return names.join("");
  return `${names.slice(0, -1).join(", ")} and ${names.at(-1)}`;
}

/** The words of one group event, names as this person knows them ("you" for me). */
export function eventText(ev) {
  const members = (ev.members || []).map((p) => who(p, false));
  const actor = who(ev.actor, true);
  switch (ev.event) {
    case "added": return `${actor} added ${joinNames(members)}`;
    case "removed": return `${actor} removed ${joinNames(members)}`;
    case "left": return `${actor} left`;
    case "admin": {
      const people = (ev.members || []).map((p, i) => who(p, i === 0));
      const plural = people.length > 1 || ev.members[0] === ME;
      return `${joinNames(people)} ${plural ? "are" : "is"} now ${people.length > 1 ? "admins" : "an admin"}`;
    }
    case "renamed": return `${actor} renamed the group to ${ev.name}`;
    default: return "";
  }
}

/** The group's latest event, when it is newer than its latest message (the list's preview). */
export function lastEvent(conv) {
  const ev = conv.events?.at(-1);
  return ev && ev.us > (conv.lastUs || 0) ? ev : null;
}

/**
 * `messages` (oldest first) with the group's events among them, by time: those from the first
 * message shown on (all of them once the history's beginning is on screen, `hasMore` false).
 * An event is {sys: true, id, us, ...}; anything else is a message.
 */
export function withEvents(messages, conv, hasMore) {
  const events = conv?.events;
  if (!events?.length) return messages;
  const from = hasMore && messages.length ? messages[0].us : -Infinity;
  const out = [];
  let i = 0;
  for (const e of events) {
    if (e.us < from) continue;
    while (i < messages.length && messages[i].us <= e.us) out.push(messages[i++]);
    out.push({...e, sys: true, id: `event ${e.us} ${e.event} ${e.actor}`});
  }
  while (i < messages.length) out.push(messages[i++]);
  return out;
}

/** One event as a line across the conversation (text only: names are never HTML). */
export function systemLine(ev) {
  return el("li", {class: "system", data: {event: ev.event, us: String(ev.us)}},
            el("span", {text: eventText(ev)}));
}

// -- the info panel -------------------------------------------------------------------------

/** Fill `body` (the info dialog's) with group `conv`'s panel. */
export function renderGroupInfo(conv, body) {
  const admin = isAdmin(conv);
  const error = el("p", {class: "form-error", attrs: {role: "alert", hidden: true}});
  const status = el("p", {class: "form-status", attrs: {role: "status"}});
  const count = el("h3", {attrs: {id: "group-members-title"}});
  const members = el("ul", {class: "pick-list group-members", attrs: {"aria-labelledby": "group-members-title"}});
  panel = {id: conv.id, members, count, admin, error, status};
  body.replaceChildren();

  if (admin) {
    const name = el("input", {attrs: {maxlength: "64", required: true, value: titleOf(conv),
                                      "aria-label": "Group name", id: "group-rename"}});
    body.append(el("form", {class: "inline-form row", on: {submit: async (ev) => {
      ev.preventDefault();
      const value = name.value.trim();
      if (!value || value === titleOf(state.convs.get(conv.id))) return;
      await change(conv, {name: value}, `Renamed to ${value}`);
    }}}, name, el("button", {class: "btn primary", text: "Rename", attrs: {type: "submit"}})));
  }
  body.append(count, members);
  if (admin) {
    const add = el("input", {attrs: {type: "tel", inputmode: "tel", placeholder: "phone number", id: "group-add",
                                     "aria-label": "Phone number to add"}});
    body.append(el("form", {class: "inline-form row", on: {submit: async (ev) => {
      ev.preventDefault();
      // Typed as people write numbers ("+44 7700 900123"): digits only to the server (defect 4).
      const {phone, error: why} = normalisePhone(add.value);
      if (why) {
        showError(error, why);
        add.setAttribute("aria-invalid", "true");
        return;
      }
      add.removeAttribute("aria-invalid");
      if (await change(conv, {add: [phone]}, `${phone} added`)) add.value = "";
    }}}, add, el("button", {class: "btn primary", text: "Add", attrs: {type: "submit"}})));
  }
  body.append(error, status);
  if (!conv.note) {
    body.append(el("p", {}, el("button", {class: "btn danger", text: "Leave group",
      attrs: {type: "button"}, on: {click: () => leave(conv)}})));
  }
  drawMembers(conv);
}

/** The member list, with each one's buttons (for an admin): make admin, remove. */
function drawMembers(conv) {
  const admins = conv.admins || [];
  const people = conv.participants || [];
  $("dlg-info-title").textContent = titleOf(conv);
  panel.count.textContent = people.length === 1 ? "1 member" : `${people.length} members`;
  const sorted = [...people].sort((a, b) => (b === ME) - (a === ME) ||
                                            nameOf(a).localeCompare(nameOf(b)));
  panel.members.replaceChildren(...sorted.map((p) => {
    const name = p === ME ? `${MY_NAME} (you)` : nameOf(p);
    const isAdminP = admins.includes(p);
    return el("li", {class: "pick", data: {phone: p}},
      avatar(nameOf(p), `p:${p}`),
      el("span", {class: "pick-text"}, el("span", {text: name}),
         el("span", {class: "muted", text: isAdminP ? `${p} · admin` : p})),
      panel.admin && p !== ME && !isAdminP ? el("button", {
        class: "btn", text: "Make admin", attrs: {type: "button", "aria-label": `Make ${name} an admin`},
        on: {click: () => change(conv, {admins: [p]}, `${name} is now an admin`)}}) : null,
      panel.admin && p !== ME ? el("button", {
        class: "btn danger", text: "Remove", attrs: {type: "button", "aria-label": `Remove ${name}`},
        on: {click: () => removeMember(conv, p, name)}}) : null);
  }));
}

/** PATCH the group; the panel follows (refreshGroup's "header" event), the reason stays in it. */
async function change(conv, what, done) {
  const shown = panel;
  showError(shown.error, "");
  shown.status.textContent = "";
  const r = await actions.patchGroup(conv, what);
  if (panel !== shown) return r.ok;
  if (!r.ok) showError(shown.error, r.error);
  else shown.status.textContent = done;
  return r.ok;
}

async function removeMember(conv, phone, name) {
  const ok = await confirmStep({title: `Remove ${name}?`,
                                text: `${name} will no longer get this group's messages.`, ok: "Remove"});
  if (ok) await change(conv, {remove: [phone]}, `${name} removed`);
}

async function leave(conv) {
  const ok = await confirmStep({
    title: `Leave ${titleOf(conv)}?`,
    text: "You will no longer get its messages; the history stays on this device. " +
          "An admin can add you again.",
    ok: "Leave group"});
  if (!ok) return;
  const shown = panel;
  const r = await actions.leaveGroup(conv);
  if (r.ok) $("dlg-info").close();
  else if (panel === shown) showError(shown.error, r.error);
}
