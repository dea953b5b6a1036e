// Attaching photos and files in the compose box (SPEC 8): the attach button, pasted images,
// files dropped on the conversation, and the tray of uploads above the text, each with its
// progress bar and a cancel button. Uploads belong to the conversation they were started in
// and go on while another one is on screen; a message takes the finished ones when it is sent.

import {IMAGE_TYPES, sizeLabel, upload} from "../attachments.js";
import {on, state} from "../state.js";
import {el, icon} from "../ui.js";

const $ = (id) => document.getElementById(id);
// SPEC 8's default `limits.max_attachments`: more would only be refused with the message.
export const MAX_ATTACHMENTS = 10;

// conversation id -> [{key, file, state: "uploading" | "done" | "error", sent, total, error,
//                      request, result, preview}]
const uploads = new Map();
let keys = 0;

/** Bind the attach button, paste in the text box, and dropping on the conversation. */
export function mount() {
  on("open", render);
  $("attach").addEventListener("click", () => $("attach-input").click());
  $("attach-input").addEventListener("change", (ev) => {
    add([...ev.target.files]);
    ev.target.value = ""; // the same file may be chosen again
  });
  $("text").addEventListener("paste", (ev) => {
    const files = [...(ev.clipboardData?.files || [])];
    if (!files.length) return;
    ev.preventDefault(); // an image pasted, not its name as text
    add(files);
  });
  const pane = document.querySelector("main.conversation");
  let depth = 0; // dragenter and dragleave come for every child crossed
  const carriesFiles = (ev) => [...(ev.dataTransfer?.types || [])].includes("Files");
  const showZone = (shown) => { $("drop-zone").hidden = !shown; };
  pane.addEventListener("dragenter", (ev) => {
    if (!carriesFiles(ev) || !canAttach()) return;
    ev.preventDefault();
    depth += 1;
    showZone(true);
  });
  pane.addEventListener("dragover", (ev) => {
    if (!carriesFiles(ev) || !canAttach()) return;
    ev.preventDefault();
    ev.dataTransfer.dropEffect = "copy";
  });
  pane.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) showZone(false);
  });
  // Files dropped anywhere else (or where nothing can be sent) must not make the browser
  // leave the chat to show them.
  for (const type of ["dragover", "drop"]) {
    window.addEventListener(type, (ev) => {
      if (!carriesFiles(ev) || ev.defaultPrevented) return;
      ev.preventDefault();
      ev.dataTransfer.dropEffect = "none";
    });
  }
  pane.addEventListener("drop", (ev) => {
    depth = 0;
    showZone(false);
    if (!carriesFiles(ev) || !canAttach()) return;
    ev.preventDefault();
    add([...ev.dataTransfer.files]);
    $("text").focus();
  });
}

/** A conversation is open and may be written to. */
function canAttach() {
  return !!state.open && !$("compose").hidden;
}

function listOf(id) {
  if (!uploads.has(id)) uploads.set(id, []);
  return uploads.get(id);
}

/** Upload `files` for the open conversation, all at once. */
function add(files) {
  const id = state.open;
  if (!id || !files.length) return;
  const list = listOf(id);
  for (const file of files) {
    const item = {key: ++keys, file, state: "uploading", sent: 0, total: file.size, error: "",
                  request: null, result: null, preview: null};
    // The browser's own type for a local preview: a picture format, never SVG (not inline, SPEC 8).
    if (IMAGE_TYPES.has(file.type)) item.preview = URL.createObjectURL(file);
    list.push(item);
    start(id, item);
  }
  render();
}

function start(id, item) {
  item.state = "uploading";
  item.sent = 0;
  item.error = "";
  item.request = upload(item.file, (sent, total) => {
    item.sent = sent;
    item.total = total || item.file.size;
    progress(item);
  });
  item.request.done.then((result) => {
    item.request = null;
    if (!listOf(id).includes(item)) return; // cancelled or removed meanwhile
    if (result.ok) {
      item.state = "done";
      item.result = result;
    } else {
      item.state = "error";
      item.error = result.error;
      item.again = !!result.again;
    }
    if (state.open === id) render();
  });
}

/** Stop or forget upload `item` of conversation `id`: nothing of it is sent. */
function remove(id, item) {
  item.request?.abort();
  item.request = null;
  if (item.preview) URL.revokeObjectURL(item.preview);
  uploads.set(id, listOf(id).filter((x) => x !== item));
  render();
  $("text").focus();
}

/** Whether uploads of conversation `id` are still running (its message waits for them). */
export function uploading(id) {
  return listOf(id).some((x) => x.state === "uploading");
}

/** How many uploads of conversation `id` are done, ready to go with a message. */
export function readyCount(id) {
  return listOf(id).filter((x) => x.state === "done").length;
}

/**
 * Take the finished uploads of conversation `id` for its message, out of the tray. Returns
 * {results, giveBack}: `results` for sync.send; `giveBack(sent)` once it is known whether the
 * message was kept: when not, they return to the tray.
 */
export function takeUploads(id) {
  const taken = listOf(id).filter((x) => x.state === "done");
  uploads.set(id, listOf(id).filter((x) => x.state !== "done"));
  render();
  return {
    results: taken.map((x) => x.result),
    giveBack: (sent) => {
      if (sent) {
        for (const item of taken) if (item.preview) URL.revokeObjectURL(item.preview);
        return;
      }
      uploads.set(id, [...taken, ...listOf(id)]);
      render();
    },
  };
}

/** Say why the message cannot go yet, in the tray (role=status). */
export function sayInTray(text) {
  $("uploads-status").textContent = text;
}

function progress(item) {
  const node = document.querySelector(`#uploads [data-key="${item.key}"]`);
  if (!node) return;
  const bar = node.querySelector("progress");
  if (bar) {
    bar.max = item.total || 1;
    bar.value = item.sent;
  }
  const info = node.querySelector(".upload-info");
  if (info) info.textContent = sentLabel(item);
}

/** "213 KB of 1.1 MB · 19%". */
function sentLabel(item) {
  const pct = item.total ? Math.floor((100 * item.sent) / item.total) : 0;
  return `${sizeLabel(item.sent)} of ${sizeLabel(item.total)} · ${pct}%`;
}

/** The open conversation's uploads in the tray above the text. */
export function render() {
  const id = state.open;
  const list = id ? listOf(id) : [];
  const tray = $("uploads");
  tray.replaceChildren(...list.map((item) => row(id, item)));
  tray.hidden = !list.length;
  if (!list.some((x) => x.state === "uploading")) sayInTray("");
}

function row(id, item) {
  const name = item.file.name || "file";
  const thumb = item.preview
    ? el("img", {class: "upload-thumb", attrs: {src: item.preview, alt: ""}})
    : el("span", {class: "upload-thumb"}, icon("file"));
  const main = el("span", {class: "upload-main"}, el("span", {class: "upload-name ellipsis", text: name}));
  let button;
  if (item.state === "uploading") {
    main.append(
      el("progress", {attrs: {max: item.total || 1, value: item.sent, "aria-label": `Uploading ${name}`}}),
      el("span", {class: "upload-info", text: sentLabel(item)}));
    button = el("button", {class: "icon-btn", attrs: {type: "button", "aria-label": `Cancel the upload of ${name}`,
                                                     title: "Cancel"}, on: {click: () => remove(id, item)}},
                icon("close"));
  } else if (item.state === "done") {
    main.append(el("span", {class: "upload-info", text: `Ready · ${sizeLabel(item.result.meta.size)}`}));
    button = el("button", {class: "icon-btn", attrs: {type: "button", "aria-label": `Remove ${name}`,
                                                     title: "Remove"}, on: {click: () => remove(id, item)}},
                icon("close"));
  } else {
    main.append(el("span", {class: "upload-error", attrs: {role: "alert"}, text: item.error}));
    if (item.again) {
      main.append(el("button", {class: "link-btn", text: "Try again", attrs: {type: "button"},
                                on: {click: () => { start(id, item); render(); }}}));
    }
    button = el("button", {class: "icon-btn", attrs: {type: "button", "aria-label": `Dismiss ${name}`,
                                                     title: "Dismiss"}, on: {click: () => remove(id, item)}},
                icon("close"));
  }
  return el("li", {class: "upload", data: {key: String(item.key), state: item.state}}, thumb, main, button);
}
