// Muting a conversation (SPEC 9): the bell in the conversation's header opens #dlg-mute — for
// 1 hour, 8 hours, a week, always, or unmute (PUT /chat/mute, notify.js). A muted conversation
// sends no push to any of my devices and shows no notification here; the list marks it.

import {mute, mutedForever, mutedUntil} from "../notify.js";
import {on, state, titleOf} from "../state.js";
import {icon, showError} from "../ui.js";

const $ = (id) => document.getElementById(id);
const UNTIL = new Intl.DateTimeFormat("en-GB", {weekday: "short", day: "numeric", month: "short",
                                                 hour: "2-digit", minute: "2-digit"});

/** Bind the header's bell and the dialog; follow the open conversation and the mutes. */
export function mount() {
  on("header", renderButton);
  on("open", renderButton);
  $("conv-mute").addEventListener("click", openDialog);
  $("mute-form").addEventListener("submit", choose);
}

/** "Muted until Tue 14 Jan, 18:00", "Muted", or "" (not muted). */
export function mutedLabel(id) {
  const until = mutedUntil(id);
  if (!until) return "";
  if (mutedForever(id)) return "Muted";
  return `Muted until ${UNTIL.format(new Date(until / 1000))}`;
}

function renderButton() {
  const id = state.open;
  if (!id) return;
  const label = mutedLabel(id);
  const button = $("conv-mute");
  button.replaceChildren(icon(label ? "bellOff" : "bell"));
  button.classList.toggle("is-muted", !!label);
  const text = label ? `${label}: change` : "Mute notifications";
  button.setAttribute("aria-label", text);
  button.title = text;
}

function openDialog() {
  const id = state.open;
  const conv = state.convs.get(id);
  if (!conv) return;
  const label = mutedLabel(id);
  $("dlg-mute-title").textContent = `Mute ${titleOf(conv)}`;
  $("mute-state").textContent = label ? `${label}.`
    : "Notifications are on for this conversation.";
  $("mute-off").hidden = !label;
  showError($("mute-error"), "");
  $("dlg-mute").showModal();
}

async function choose(ev) {
  ev.preventDefault();
  const id = state.open;
  const value = ev.submitter?.value;
  if (!id || !value) return;
  const seconds = value === "unmute" ? null : value === "always" ? "always" : Number(value);
  for (const b of $("mute-form").querySelectorAll("button")) b.disabled = true;
  const r = await mute(id, seconds);
  for (const b of $("mute-form").querySelectorAll("button")) b.disabled = false;
  if (!r.ok) {
    showError($("mute-error"), `Not changed: ${r.error}`);
    return;
  }
  $("dlg-mute").close();
  $("conv-mute").focus();
}
