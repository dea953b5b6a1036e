// The banners: offline (while the receive socket is closed, with the reconnection countdown),
// and the browser's storage being full (attachments cannot be kept, so their messages wait on
// the server, SPEC 8).

import {on} from "../state.js";
import {reconnect, retryInSeconds, retryStorage} from "../sync.js";

const $ = (id) => document.getElementById(id);
let timer = null;

/** Follow the receive socket's state; "Retry now" reconnects at once. */
export function mount() {
  on("online", show);
  $("reconnect").addEventListener("click", reconnect);
  $("reconnect-conv").addEventListener("click", reconnect);
  on("storage", (full) => { $("storage-full").hidden = !full; });
  $("storage-retry").addEventListener("click", retryStorage);
}

function show(online) {
  document.body.classList.toggle("is-offline", !online);
  document.body.classList.toggle("is-online", online);  // the receive socket is open (tests wait for it)
  clearInterval(timer);
  // Two banners with the same words: the sidebar's, and the conversation's for a phone-sized
  // screen, where the sidebar is hidden (CSS shows one at a time; issue 18, defect 5).
  $("offline").hidden = online;
  $("offline-conv").hidden = online;
  if (!online) {
    const tick = () => {
      const left = retryInSeconds();
      const text = left ? `Offline — reconnecting in ${left} s` : "Offline — connecting…";
      $("offline-text").textContent = text;
      $("offline-conv-text").textContent = text;
    };
    tick();
    timer = setInterval(tick, 500);
  }
}

/** The history cannot be kept on this device: the chat cannot run. */
export function showNoStorage() {
  const text = "This browser does not let the chat keep its history (IndexedDB is unavailable).";
  $("offline").hidden = false;
  $("offline-text").textContent = text;
  $("offline-conv").hidden = false;
  $("offline-conv-text").textContent = text;
}
