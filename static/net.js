// The network: JSON requests, uploads with their progress, and `Link`, a WebSocket that reconnects by itself with backoff.

const WS_BASE = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}`;
const BACKOFF_MS = [500, 1000, 2000, 4000, 8000];
const MAX_BACKOFF_MS = 10_000;
// A socket that closes sooner than this after opening counts as a failure too (a server that
// accepts and then drops at once, e.g. 1013 try again later, must not be hammered).
const STABLE_MS = 10_000;
// The server closed this socket to make room for a newer one of the same user (SPEC 10,
// limits.sockets_per_user): reconnecting by itself would close the next oldest, and so on round
// the user's tabs; it comes back on the next `wake` (the person acts, the network returns).
const TOO_MANY_SOCKETS = 4429;

/** A JSON request to the server. Resolves {ok, status, data}; a network failure is status 0. */
export async function api(method, path, body) {
  const init = {method, headers: {Accept: "application/json"}, credentials: "same-origin"};
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch {
    return {ok: false, status: 0, data: {error: "the server cannot be reached"}};
  }
  let data = {};
  try { data = await resp.json(); } catch { /* not JSON: keep {} */ }
  if (!resp.ok && !data.error) data.error = `the server answered ${resp.status}`;
  return {ok: resp.ok, status: resp.status, data};
}

/**
 * Send `file` as the one part `file` of a `multipart/form-data` POST to `path` (SPEC 8), with
 * XMLHttpRequest, the one browser API that reports an upload's progress:
 * `onProgress(sentBytes, totalBytes)` as it goes. Returns {done, abort}: `done` resolves
 * {ok, status, data, aborted?} like `api` (a network failure is status 0; `abort()` resolves it
 * with `aborted` true).
 */
export function upload(path, file, onProgress = () => {}) {
  const xhr = new XMLHttpRequest();
  const done = new Promise((resolve) => {
    const failed = (error, extra = {}) => resolve({ok: false, status: 0, data: {error}, ...extra});
    xhr.upload.onprogress = (ev) => onProgress(ev.loaded, ev.lengthComputable ? ev.total : file.size);
    xhr.onload = () => {
      let data = {};
      try { data = JSON.parse(xhr.responseText); } catch { /* not JSON: keep {} */ }
      const ok = xhr.status >= 200 && xhr.status < 300;
      if (!ok && !data.error) data.error = `the server answered ${xhr.status}`;
      resolve({ok, status: xhr.status, data});
    };
    xhr.onerror = () => failed("the server cannot be reached");
    xhr.onabort = () => failed("cancelled", {aborted: true});
  });
  xhr.open("POST", path);
  xhr.setRequestHeader("Accept", "application/json");
  const form = new FormData();
  form.append("file", file, file.name || "file");
  xhr.send(form);
  return {done, abort: () => xhr.abort()};
}

/**
 * One socket that comes back after a network drop or a server restart.
 *
 * - `send(frame)` sends now when open, else keeps the frame and sends it once open
 *   (`trySend` sends only when open and says whether it did).
 * - after a close, it reconnects with backoff (0.5 s doubling to 10 s, with jitter) while
 *   `wanted()` is true or frames wait; otherwise (and after a 4429) it rests until the next
 *   `send` or `wake`.
 * - hooks: onOpen(link), onFrame(frame, link), onClose(link, {opened, code}).
 */
export class Link {
  constructor(path, {onOpen, onFrame, onClose, wanted} = {}) {
    this.url = WS_BASE + path;
    this.onOpen = onOpen || (() => {});
    this.onFrame = onFrame || (() => {});
    this.onClose = onClose || (() => {});
    this.wanted = wanted || (() => false);
    this.ws = null;
    this.queue = [];
    this.failures = 0;
    this.timer = null;
    this.stopped = false;
    this.retryAt = 0;
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  /** Connect now unless open or connecting. */
  wake() {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.timer = null;
    if (this.ws) return;
    const ws = new WebSocket(this.url);
    this.ws = ws;
    let opened = false;
    let openedAt = 0;
    ws.onopen = () => {
      opened = true;
      openedAt = Date.now();
      this.onOpen(this);
      for (const data of this.queue.splice(0)) ws.send(data);
    };
    ws.onmessage = (ev) => {
      let frame;
      try { frame = JSON.parse(ev.data); } catch { return; }
      if (frame && typeof frame === "object") this.onFrame(frame, this);
    };
    ws.onclose = (ev) => {
      this.ws = null;
      if (opened && Date.now() - openedAt >= STABLE_MS) this.failures = 0;
      else this.failures += 1;
      this.onClose(this, {opened, code: ev.code});
      if (ev.code === TOO_MANY_SOCKETS) return;
      if (!this.stopped && (this.queue.length || this.wanted())) this.schedule();
    };
  }

  /** Reconnect after the backoff for the failures so far. */
  schedule() {
    if (this.timer || this.stopped) return;
    const base = this.failures === 0 ? 250 : BACKOFF_MS[this.failures - 1] ?? MAX_BACKOFF_MS;
    const delay = base * (0.8 + Math.random() * 0.4);
    this.retryAt = Date.now() + delay;
    this.timer = setTimeout(() => { this.timer = null; this.wake(); }, delay);
  }

  /** Send now if open, else keep it for when the socket opens (and make sure it will). */
  send(frame) {
    if (this.stopped) return; // refused for good: nothing to send it on
    const data = JSON.stringify(frame);
    if (this.isOpen) {
      this.ws.send(data);
    } else {
      this.queue.push(data);
      if (!this.timer) this.wake();
    }
  }

  /** Send only if open; true when sent. */
  trySend(frame) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  /** Drop the current socket (the network is gone); it comes back under the usual policy. */
  drop() {
    if (this.ws) this.ws.close(4000, "network down");
  }

  /** Close for good (logged out, left the group). */
  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.queue = [];
    if (this.ws) this.ws.close(1000);
  }
}

export const paths = {
  receive: (me) => `/ws/chat/special/${me}/`,
  personal: (me, peer) => `/ws/chat/personal/${me}/${peer}/`,
  group: (me, key) => `/ws/chat/group/${me}/${key}/`,
  room: (name) => `/ws/chat/room/${encodeURIComponent(name)}/`,
};
