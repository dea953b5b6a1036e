// The chat client's entry: wires the state and the protocol's flows (state.js, sync.js,
// actions.js; no DOM) to the views (views/*.js), and the page's URL to the open conversation.
// How the modules fit and the flows they follow: docs/client.md.

import {joinRoomFromUrl} from "./actions.js";
import * as notify from "./notify.js";
import {ME, MY_NAME, emit, on, setAccount, setVisible, state} from "./state.js";
import * as sync from "./sync.js";
import {ageLabel} from "./time.js";
import {avatar, hydrateIcons, toast} from "./ui.js";
import {mount as mountAccount} from "./views/account.js";
import {mount as mountAdmin} from "./views/admin.js";
import {mount as mountAttach} from "./views/attach.js";
import {closeConv, markRead, mount as mountConversation, openConv, renderHeader}
  from "./views/conversation.js";
import {mount as mountDevices} from "./views/devices.js";
import {mount as mountDialogs} from "./views/dialogs.js";
import {mount as mountGroupInfo} from "./views/groupinfo.js";
import {mount as mountList, renderList} from "./views/list.js";
import {mount as mountLongText} from "./views/longtext.js";
import {mount as mountMedia} from "./views/media.js";
import {mount as mountMute} from "./views/mute.js";
import {mount as mountOffline, showNoStorage} from "./views/offline.js";
import {mount as mountRooms} from "./views/rooms.js";
import {mount as mountRefs} from "./views/refs.js";
import {mount as mountSearch} from "./views/search.js";
import {mount as mountSettings} from "./views/settings.js";

const meEl = document.getElementById("me");

function routeFromPath(path) {
  let m = path.match(/^\/chat\/personal\/[0-9]+\/([0-9]{10,15})\/$/);
  if (m) return `p:${m[1]}`;
  m = path.match(/^\/chat\/group\/[0-9]+\/([A-Za-z0-9]{10})\/$/);
  if (m) return `g:${m[1]}`;
  m = path.match(/^\/chat\/room\/([A-Za-z0-9_-]{1,64})\/$/);
  if (m) return `r:${m[1]}`;
  return null;
}

/** Open the conversation of `location` (back and forward buttons). */
async function route(push) {
  const id = routeFromPath(location.pathname);
  if (!id) return closeConv({push: false});
  if (id[0] === "r") {
    const conv = state.convs.get(id);
    if (!conv || conv.left) return openRoomFromUrl(id.slice(2));
  }
  return openConv(id, {push});
}

async function openRoomFromUrl(name) {
  const id = await joinRoomFromUrl(name);
  return id ? openConv(id, {push: false}) : undefined;
}

/** My name and avatar in the sidebar's head (they follow a change of name). */
function showMe() {
  document.getElementById("me-name").textContent = MY_NAME;
  const av = avatar(MY_NAME, `p:${ME}`);
  av.id = "me-avatar";
  document.getElementById("me-avatar").replaceWith(av);
  emit("list");
  emit("header", null);
}

function bind() {
  hydrateIcons();
  showMe();
  mountOffline();
  mountList();
  mountConversation();
  mountRefs();
  mountSearch();
  mountAttach();
  mountLongText();
  mountMedia();
  mountDialogs();
  mountGroupInfo();
  mountRooms();
  mountAccount();
  mountDevices();
  mountAdmin();
  mountMute();
  mountSettings();
  on("account", showMe);
  // SPEC 9: a notification while the page is hidden; the mutes again at each connection.
  on("incoming", (fresh) => { notify.notifyIncoming(fresh).catch(console.error); });
  on("online", (online) => { if (online) notify.refreshMutes(); });
  on("open-path", openPath);
  on("notice", toast);
  on("logged-out", () => { if (!state.leaving) location.assign("/login"); });
  window.addEventListener("popstate", () => route(false));
  setVisible(document.visibilityState === "visible");
  document.addEventListener("visibilitychange", () => {
    setVisible(document.visibilityState === "visible");
    if (!state.visible) return;
    if (!state.online) sync.reconnect();
    markRead(state.open);
  });
  // The browser knows before a silent TCP connection does: drop the sockets and come back with it.
  window.addEventListener("offline", sync.networkDown);
  window.addEventListener("online", sync.networkUp);
  // Relative times ("just now", "14:05") age: refresh them twice a minute.
  setInterval(() => {
    for (const t of document.querySelectorAll("time[data-us]")) {
      t.textContent = ageLabel(Number(t.dataset.us));
    }
    if (state.open) renderHeader();
  }, 30_000);
}

/** Open the conversation of page `path` here (a notification was clicked). */
function openPath(path) {
  if (location.pathname !== path) history.pushState({}, "", path);
  route(false);
}

async function main() {
  setAccount(meEl.dataset.phone, meEl.dataset.name);
  notify.registerWorker(openPath);
  bind();
  try {
    await sync.open();
  } catch (err) {
    showNoStorage();
    throw err;
  }
  await sync.load();
  await notify.loadSettings();
  renderList();
  sync.connect();
  // The conversation comes from the address, not from the page's data: offline, the service
  // worker answers every chat URL with the same copy of the page (SPEC 9).
  const id = routeFromPath(location.pathname);
  if (id) {
    if (id[0] === "r" && (!state.convs.has(id) || state.convs.get(id).left)) await openRoomFromUrl(id.slice(2));
    else await openConv(id, {push: false});
  }
  document.body.classList.add("ready");
  // Again at each start while they are on: the server has the subscription back after a
  // logout and login, or a new key (idempotent).
  if (notify.settings.notifications) notify.subscribe().catch(console.error);
}

main();
