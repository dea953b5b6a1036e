// Minimal chat client: one receive socket, one send socket per open dialogue.
// Everything a person typed is rendered with textContent, never as HTML.

const me = document.getElementById("me").dataset.phone;
const statusEl = document.getElementById("status");
const list = document.getElementById("messages");
const compose = document.getElementById("compose");
const text = document.getElementById("text");
const typingEl = document.getElementById("typing");
const wsBase = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}`;

let current = null;           // phone of the open dialogue
const senders = new Map();    // peer phone -> send socket (open or opening)
const bubbles = new Map();    // "from|sent_timestamp" -> <li>

function stamp() {
  return new Date().toISOString().replace("T", " ").replace("Z", "").slice(0, 23) + "000";
}

function sendSocket(peer) {
  let ws = senders.get(peer);
  if (ws && ws.readyState <= WebSocket.OPEN) return ws;
  ws = new WebSocket(`${wsBase}/ws/chat/personal/${me}/${peer}/`);
  ws.queue = [];
  ws.onopen = () => { for (const f of ws.queue.splice(0)) ws.send(f); };
  ws.onmessage = (ev) => onSendSocketFrame(JSON.parse(ev.data));
  ws.onclose = () => senders.delete(peer);
  senders.set(peer, ws);
  return ws;
}

function sendFrame(peer, frame) {
  const ws = sendSocket(peer);
  const data = JSON.stringify(frame);
  if (ws.readyState === WebSocket.OPEN) ws.send(data); else ws.queue.push(data);
}

function addBubble(from, body, ts, mine) {
  const li = document.createElement("li");
  li.className = mine ? "mine" : "theirs";
  const p = document.createElement("p");
  p.textContent = body;
  const meta = document.createElement("small");
  meta.textContent = ts.slice(11, 16) + (mine ? " ·" : "");
  li.append(p, meta);
  list.append(li);
  li.scrollIntoView({block: "end"});
  bubbles.set(`${from}|${ts}`, li);
  return li;
}

function tick(ts, mark) {
  const li = bubbles.get(`${me}|${ts}`);
  if (li) li.querySelector("small").textContent = ts.slice(11, 16) + " " + mark;
}

function onSendSocketFrame(f) {
  if (f.command === "msg_sent") tick(f.message, "✓");
  else if (f.command === "error") statusEl.textContent = `error: ${f.message}`;
}

function received(m) {
  // Shown (stored, for this minimal client) first, then acknowledged: the server deletes on ack.
  if (m.msg_from === current) addBubble(m.msg_from, m.message, m.sent_timestamp, false);
  sendFrame(m.msg_from, {message: m.sent_timestamp, command: "msg_received", msg_from: me,
                         msg_to: m.msg_from, sent_timestamp: stamp()});
}

function connect() {
  const ws = new WebSocket(`${wsBase}/ws/chat/special/${me}/`);
  ws.onopen = () => {
    statusEl.textContent = "online";
    ws.send(JSON.stringify({command: "fetch_msgs", msg_to: me}));
  };
  ws.onmessage = (ev) => {
    const f = JSON.parse(ev.data);
    if (f.command === "new_msg") received(f);
    else if (f.command === "fetch_msgs") f.messages.forEach(received);
    else if (f.command === "msg_received") tick(f.message, "✓✓");
    else if (f.command === "msg_read") tick(f.message, "✓✓ read");
    else if (f.command === "is_typing" && f.msg_from === current) {
      typingEl.textContent = "typing…";
      setTimeout(() => { typingEl.textContent = ""; }, 2000);
    }
  };
  ws.onclose = () => { statusEl.textContent = "offline, reconnecting…"; setTimeout(connect, 2000); };
}

function open(peer) {
  current = peer;
  list.replaceChildren();
  document.getElementById("dialogue-title").textContent = `Dialogue with ${peer}`;
  compose.hidden = false;
  sendSocket(peer);
  text.focus();
}

document.getElementById("open-dialogue").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const peer = document.getElementById("peer").value.trim();
  const resp = await fetch("/chat/special/personal", {
    method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({msg_to: peer}),
  });
  if (resp.ok) open(peer);
  else statusEl.textContent = (await resp.json()).error;
});

compose.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const body = text.value;
  if (!body.trim() || !current) return;
  const ts = stamp();
  addBubble(me, body, ts, true);
  sendFrame(current, {message: body, command: "new_msg", msg_from: me, msg_to: current,
                      sent_timestamp: ts});
  text.value = "";
});

text.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); compose.requestSubmit(); return; }
  if (current) sendFrame(current, {message: "", command: "is_typing", msg_from: me, msg_to: current,
                                   sent_timestamp: stamp()});
});

connect();
const opened = document.getElementById("me").dataset;
if (opened.openKind === "personal" && opened.openId) open(opened.openId);
