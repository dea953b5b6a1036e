// This device's notification settings (SPEC 9), in the profile dialog ("Notifications on this
// device"): notifications on or off (the browser's permission, then a push subscription, notify.js),
// the message text in them, and their sound. Stored in this browser, per account.

import {permission, setNotifications, setPreviews, setSound, settings, subscribe} from "../notify.js";

const $ = (id) => document.getElementById(id);

/** Bind the three switches; show the current settings each time the dialog opens. */
export function mount() {
  $("show-profile").addEventListener("click", render);
  $("set-notifications").addEventListener("change", toggleNotifications);
  $("set-previews").addEventListener("change", (ev) => saved(setPreviews(ev.target.checked),
    ev.target.checked ? "Notifications show the message text." : "Notifications show who wrote, not what."));
  $("set-sound").addEventListener("change", (ev) => saved(setSound(ev.target.checked),
    ev.target.checked ? "Notifications play a sound." : "Notifications are silent."));
}

function render() {
  $("set-notifications").checked = settings.notifications;
  $("set-previews").checked = settings.previews;
  $("set-sound").checked = settings.sound;
  const blocked = permission() === "denied";
  $("notify-status").textContent = permission() === "unsupported"
    ? "This browser cannot show notifications."
    : blocked ? "Notifications are blocked for this site: allow them in the browser's site settings."
      : "";
  $("set-notifications").disabled = permission() === "unsupported";
}

async function saved(done, text) {
  await done;
  $("notify-status").textContent = text;
}

async function toggleNotifications(ev) {
  const box = ev.target;
  const status = $("notify-status");
  box.disabled = true;
  status.textContent = box.checked ? "Turning notifications on…" : "";
  const r = await setNotifications(box.checked);
  box.checked = r.on;
  status.textContent = r.note;
  if (r.on) {
    const push = await subscribe();
    status.textContent = push.note;
  }
  box.disabled = false;
}
