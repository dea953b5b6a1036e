// Attachments on screen (SPEC 8): the photos and files of one message, and the full-size viewer.
// Photos take their place at once, sized from the width and height the server gave (no jump
// when the bytes arrive); their bytes come from this device (IndexedDB), or from the server
// while the device is still fetching them. Only JPEG, PNG, GIF and WebP are ever shown inline:
// anything else (SVG and HTML among them) is a download link with its name and size.

import {isPhoto, localUrl, serverUrl, sizeLabel} from "../attachments.js";
import {state} from "../state.js";
import {el, icon} from "../ui.js";

const $ = (id) => document.getElementById(id);
// The box a photo fits in, in CSS pixels: the server's thumbnails are at most 320 px.
const THUMB_W = 280;
const THUMB_H = 320;
const GONE = "no longer available: the server deleted it before this device kept a copy";

let opener = null; // the element focused when the viewer opened: the focus goes back there

/** Bind the viewer's dialog: a click beside the photo closes it, as Escape does. */
export function mount() {
  const dialog = $("dlg-viewer");
  dialog.addEventListener("click", (ev) => { if (ev.target === dialog) dialog.close(); });
  dialog.addEventListener("close", () => {
    $("viewer-img").removeAttribute("src");
    opener?.focus();
    opener = null;
  });
}

/** `width` x `height` scaled down to fit the thumbnail box (never up): {w, h}. */
export function fitted(width, height) {
  const scale = Math.min(1, THUMB_W / width, THUMB_H / height);
  return {w: Math.max(1, Math.round(width * scale)), h: Math.max(1, Math.round(height * scale))};
}

/** The photos and files of message `msg` (its `atts`), for its bubble. */
export function attachmentsNode(msg) {
  const box = el("div", {class: "atts"});
  for (const att of msg.atts) box.append(isPhoto(att) ? photo(msg, att) : file(msg, att));
  if (state.unkept.has(msg.id)) {
    box.append(el("p", {class: "att-note", attrs: {role: "note"},
                        text: "Not kept on this device: the browser's storage is full."}));
  }
  return box;
}

/** Where the bytes of `att`'s `part` are: this device, else the server unless it deleted them. */
async function sourceOf(msg, att, part) {
  const url = await localUrl(att.id, part);
  if (url) return url;
  return msg.files === "gone" ? null : serverUrl(att.id, part);
}

function photo(msg, att) {
  const {w, h} = fitted(att.width, att.height);
  const img = el("img", {attrs: {width: w, height: h, alt: att.name, decoding: "async"}});
  const button = el("button", {class: "att-photo", attrs: {
    type: "button", "aria-label": `Photo ${att.name}, ${sizeLabel(att.size)}: open full size`},
    data: {att: att.id}, on: {click: () => openViewer(msg, att, button)}}, img);
  sourceOf(msg, att, att.thumbnail ? "thumb" : "file").then((src) => {
    if (src) {
      img.src = src;
    } else {
      button.disabled = true;
      button.classList.add("gone");
      button.setAttribute("aria-label", `Photo ${att.name}: ${GONE}`);
      button.title = `This photo is ${GONE}`;
    }
  }).catch(console.error);
  return button;
}

function file(msg, att) {
  const link = el("a", {class: "att-file", attrs: {download: att.name}, data: {att: att.id}},
    icon("file"),
    el("span", {class: "att-text"},
       el("span", {class: "att-name", text: att.name}),
       el("span", {class: "att-size", text: sizeLabel(att.size)})),
    icon("download", "att-get"));
  link.setAttribute("aria-label", `Download ${att.name}, ${sizeLabel(att.size)}`);
  sourceOf(msg, att, "file").then((src) => {
    if (src) {
      link.href = src;
    } else {
      link.classList.add("gone");
      link.setAttribute("aria-label", `${att.name}: ${GONE}`);
      link.title = `This file is ${GONE}`;
    }
  }).catch(console.error);
  return link;
}

/** The full-size photo in its dialog (Escape, the close button or a click beside it close it). */
async function openViewer(msg, att, from) {
  const src = await sourceOf(msg, att, "file");
  if (!src) return;
  const dialog = $("dlg-viewer");
  const img = $("viewer-img");
  // Sized from the server's width and height to fit the window (never enlarged), so that the
  // dialog does not jump when the bytes are in.
  // The dialog leaves 12 px around it, and its head takes about 60 px.
  const scale = Math.min(1, (innerWidth - 26) / att.width, (innerHeight - 110) / att.height);
  img.width = Math.max(1, Math.round(att.width * scale));
  img.height = Math.max(1, Math.round(att.height * scale));
  img.alt = att.name;
  img.src = src;
  $("viewer-title").textContent = att.name;
  $("viewer-size").textContent = `${att.width} × ${att.height} · ${sizeLabel(att.size)}`;
  const link = $("viewer-download");
  link.href = src;
  link.download = att.name;
  opener = from;
  dialog.showModal();
}
