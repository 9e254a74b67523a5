// The relaybox web app: this browser as a device (docs/client-js.md "The web app").
// Built on the SDK served beside it (../sdk/relaybox.js); every file comes from the
// relaybox server itself.

import {
  Client, IndexedDBStore, forgetIdentity, loadIdentity, lookupPairing, normalizePairingCode,
  pair, secureContextAvailable,
} from "../sdk/relaybox.js";
import qrcode from "../vendor/qrcode-generator/qrcode.mjs";

const KEEP_PER_STREAM = 5000; // events kept in memory per stream (oldest dropped)
const RENDER_STEP = 200; // rows rendered at once; "Show older" adds as many
// No rows on show: the next render makes every row afresh (read, never changed).
const NOTHING_RENDERED = Object.freeze({ stream: null, seqs: Object.freeze([]), notices: 0 });
const HISTORY_PAGE = 200; // events read over REST when a stream is first shown

const $ = (id) => document.getElementById(id);
const server = new URL("..", location.href).href.replace(/\/$/, "");
const store = new IndexedDBStore("relaybox");

const state = {
  identity: null,
  client: null,
  streams: new Map(), // stream → {events: [], seqs: Set, head, historyLoaded}
  selected: null,
  renderLimit: RENDER_STEP,
  rendered: NOTHING_RENDERED,
  dirty: false,
  devices: new Map(), // device_id → device JSON
  notify: false,
};
// For tests and the curious: the live state of the app.
window.relayboxApp = state;

// -- small helpers ------------------------------------------------------------------------

function bodyText(body) {
  if (typeof body === "string") return body;
  if (body && typeof body === "object" && !Array.isArray(body) && typeof body.text === "string"
      && Object.keys(body).length === 1) return body.text;
  return JSON.stringify(body, null, 2);
}

function deviceName(id) {
  if (id === null || id === undefined) return "server";
  const d = state.devices.get(id);
  if (d) return d.name;
  return `device ${String(id).slice(-8)}`;
}

function showNotice(html, ...buttons) {
  const box = $("notice");
  box.replaceChildren();
  const p = document.createElement("div");
  p.innerHTML = html; // only our own constant texts come here
  box.append(p);
  for (const [label, fn] of buttons) {
    const b = document.createElement("button");
    b.textContent = label;
    b.addEventListener("click", fn);
    box.append(b, " ");
  }
  box.hidden = false;
}

function hideNotice() { $("notice").hidden = true; }

function setStatus(text, kind) {
  const el = $("status");
  el.textContent = text;
  el.dataset.state = kind;
}

function defaultDeviceName() {
  const ua = navigator.userAgent;
  const os = /Android/.test(ua) ? "Android" : /iPhone|iPad/.test(ua) ? "iPhone"
    : /Mac OS X/.test(ua) ? "Mac" : /Windows/.test(ua) ? "Windows" : /Linux/.test(ua) ? "Linux" : "";
  const browser = /Firefox\//.test(ua) ? "firefox" : /Edg\//.test(ua) ? "edge"
    : /Chrom(e|ium)\//.test(ua) ? "chrome" : /Safari\//.test(ua) ? "safari" : "browser";
  return (os ? `${browser}-${os}` : browser).toLowerCase().replace(/[^a-z0-9._-]/g, "-");
}

// -- start --------------------------------------------------------------------------------

async function main() {
  if (!secureContextAvailable()) {
    // WebCrypto exists only in a secure context (docs/client-js.md "Secure context").
    const https = `https://${location.host}${location.pathname}${location.hash}`;
    setStatus("Not secure", "stopped");
    showNotice(
      "<p><strong>This page cannot work over plain http from another address.</strong> " +
      "Browsers offer the cryptography relaybox needs (WebCrypto) only on https or on " +
      "localhost, and this page was opened as <code>" + location.origin.replace(/</g, "") +
      "</code>.</p><p>Fix: run relaybox with TLS (settings <code>tls.cert_file</code> and " +
      "<code>tls.key_file</code>, or a reverse proxy; see docs/deployment.md, section " +
      "\"TLS\") and open the https address, or open this page on the server itself at " +
      "http://localhost.</p><p><a id=\"https-link\"></a></p>");
    const a = $("https-link");
    a.href = https;
    a.textContent = `Try ${https}`;
    return;
  }
  const fromLink = readPairFragment();
  try {
    state.identity = await loadIdentity(store);
  } catch (exc) {
    showNotice("<p>This browser's storage (IndexedDB) is not available: private browsing " +
      "may block it. relaybox keeps the device key there.</p>");
    setStatus("No storage", "stopped");
    return;
  }
  if (state.identity && state.identity.server !== server) state.identity = null;
  if (state.identity) {
    if (fromLink) {
      showNotice("<p>This browser is already paired; the pairing code in the link was not " +
        "used. Forget this device first to pair it again.</p>", ["Dismiss", hideNotice]);
    }
    await startDevice();
  } else {
    showPairing(fromLink);
  }
}

function readPairFragment() {
  // <public_url>/app/#pair=CODE: the fragment never reaches the server or its logs.
  const m = /(?:^#|&)pair=([^&]+)/.exec(location.hash);
  if (!m) return null;
  history.replaceState(null, "", location.pathname + location.search);
  return decodeURIComponent(m[1]);
}

// -- pairing ------------------------------------------------------------------------------

function showPairing(code) {
  $("main-view").hidden = true;
  $("pair-view").hidden = false;
  $("me").textContent = "";
  setStatus("Not paired", "idle");
  const codeInput = $("pair-code");
  const name = $("pair-name");
  name.value = name.value || defaultDeviceName();
  if (code) {
    codeInput.value = code;
    describeInvite(code);
    name.focus();
    name.select();
  } else {
    codeInput.focus();
  }
}

async function describeInvite(code) {
  try {
    const info = await lookupPairing(server, code);
    const by = info.inviter ? ` (invited by ${info.inviter.name})` : "";
    $("pair-invite").textContent = `This pairs the browser as a device of ${info.user_name}${by}.`;
  } catch (exc) {
    $("pair-error").textContent = exc.status === 404
      ? "This pairing code is unknown, used or expired: make a new one." : String(exc.message);
  }
}

$("pair-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const err = $("pair-error");
  err.textContent = "";
  let code;
  try {
    code = normalizePairingCode($("pair-code").value);
  } catch (exc) {
    err.textContent = exc.message;
    return;
  }
  const button = $("pair-submit");
  button.disabled = true;
  button.textContent = "Pairing…";
  try {
    state.identity = await pair(server, code, $("pair-name").value, { store });
    $("pair-view").hidden = true;
    await startDevice();
  } catch (exc) {
    err.textContent = exc.status === 404
      ? "This pairing code is unknown, used or expired: make a new one."
      : exc.status === 422 || exc.status === 400 ? `The server refused: ${exc.detail}`
        : String(exc.message);
  } finally {
    button.disabled = false;
    button.textContent = "Pair";
  }
});

// -- the paired device --------------------------------------------------------------------

async function startDevice() {
  const id = state.identity;
  $("pair-view").hidden = true;
  $("main-view").hidden = false;
  $("me").textContent = id.name;
  $("fact-device").textContent = id.device_id;
  $("fact-server").textContent = id.server;
  $("rename-input").value = id.name;
  state.notify = localStorage.getItem("relaybox.notify") === "1" &&
    "Notification" in window && Notification.permission === "granted";
  $("notify").checked = state.notify;
  const client = new Client(id, { store });
  state.client = client;
  client.on("state", onState);
  client.on("welcome", onWelcome);
  client.on("event", onEvent);
  client.on("gap", (g) => addNotice(g.stream,
    `Events ${g.after + 1}–${g.next - 1} were removed by the server before this device got them.`));
  client.on("ack", onAck);
  client.on("presence", onPresence);
  client.on("fatal", onFatal);
  await client.start();
  for (const p of client.pending()) addPending(p);
  refreshDevices();
}

function onState(s) {
  const c = state.client;
  if (s === "connected") setStatus("Connected", "connected");
  else if (s === "connecting") setStatus("Connecting…", "connecting");
  else if (s === "waiting") {
    setStatus(`Offline, retrying in ${Math.max(1, Math.round(c.retryIn))} s`, "waiting");
  }
}

function onWelcome(welcome) {
  for (const [stream, head] of Object.entries(welcome.streams || {})) {
    streamOf(stream).head = head;
  }
  if (state.selected === null) {
    const names = [...state.streams.keys()].filter((s) => !s.startsWith("sys."));
    if (names.length) select(names.includes("clipboard") ? "clipboard" : names.sort()[0]);
  } else {
    loadHistory(state.selected);
  }
  schedule();
}

function onFatal(err) {
  if (err.code === "revoked") {
    setStatus("Revoked", "stopped");
    showNotice("<p><strong>This device was revoked.</strong> It can no longer send or " +
      "receive events. To use this browser again, forget it and pair it with a new code.</p>",
      ["Forget and pair again", forgetLocally]);
  } else if (err.code === "session_replaced") {
    setStatus("Open elsewhere", "stopped");
    showNotice("<p>This device is open in another tab or window, which took over.</p>",
      ["Use it here", () => { hideNotice(); startDevice(); }]);
  } else if (err.code === "auth_failed") {
    setStatus("Refused", "stopped");
    showNotice("<p>The server does not know this device any more (it may have been " +
      "removed, or the server was reset).</p>", ["Forget and pair again", forgetLocally]);
  } else {
    setStatus("Stopped", "stopped");
    showNotice(`<p>Stopped: ${String(err.message).replace(/</g, "&lt;")}</p>`);
  }
}

// -- streams and events -------------------------------------------------------------------

function streamOf(name) {
  let s = state.streams.get(name);
  if (!s) {
    s = { events: [], seqs: new Set(), head: 0, historyLoaded: false, notices: [] };
    state.streams.set(name, s);
  }
  return s;
}

function insert(name, event) {
  const s = streamOf(name);
  if (s.seqs.has(event.seq)) return false; // shown once, whatever path it came by
  s.seqs.add(event.seq);
  const ev = s.events;
  if (ev.length === 0 || ev[ev.length - 1].seq < event.seq) {
    ev.push(event);
  } else {
    let i = ev.length;
    while (i > 0 && ev[i - 1].seq > event.seq) i -= 1;
    ev.splice(i, 0, event);
  }
  if (ev.length > KEEP_PER_STREAM) {
    for (const old of ev.splice(0, ev.length - KEEP_PER_STREAM)) s.seqs.delete(old.seq);
  }
  if (event.seq > s.head) s.head = event.seq;
  state.dirty = true;
  return true;
}

function onEvent(e) {
  insert(e.stream, e);
  if (e.stream === "sys.devices") refreshDevices();
  if (state.selected === null && !e.stream.startsWith("sys.")) select(e.stream);
  if (state.notify && document.hidden && !e.stream.startsWith("sys.")) {
    try {
      new Notification(`${e.stream} from ${deviceName(e.from)}`, { body: bodyText(e.body).slice(0, 200) });
    } catch { /* notifications are optional */ }
  }
  schedule();
}

function onAck(a) {
  const s = streamOf(a.stream);
  s.events = s.events.filter((e) => e.pendingId !== a.id);
  insert(a.stream, { stream: a.stream, seq: a.seq, id: a.id, from: state.identity.device_id,
    key: a.key, ts: a.ts, body: a.body });
  schedule();
}

function addPending(p) {
  const s = streamOf(p.stream);
  s.events.push({ stream: p.stream, seq: Infinity, pendingId: p.id, body: p.body,
    from: state.identity.device_id, ts: null });
  state.dirty = true;
  schedule();
}

function addNotice(stream, text) {
  streamOf(stream).notices.push(text);
  state.dirty = true;
  schedule();
}

async function loadHistory(name) {
  const s = streamOf(name);
  if (s.historyLoaded || !state.client) return;
  s.historyLoaded = true;
  try {
    const after = Math.max(0, (s.head || 0) - HISTORY_PAGE);
    const page = await state.client.rest.history(name, after, HISTORY_PAGE);
    for (const e of page.events || []) insert(name, e);
    schedule();
  } catch {
    s.historyLoaded = false; // try again on the next welcome
  }
}

function select(name) {
  state.selected = name;
  state.renderLimit = RENDER_STEP;
  $("send-stream").value = name.startsWith("sys.") ? $("send-stream").value : name;
  loadHistory(name);
  state.dirty = true;
  schedule();
}

// Rendering happens at most once per frame, and only for the rows on show: thousands of
// events arriving together cost one DOM update, not thousands.
let frame = 0;
function schedule() {
  if (!frame) frame = requestAnimationFrame(render);
}

function render() {
  frame = 0;
  if (!state.dirty) return;
  state.dirty = false;
  renderStreamList();
  renderEvents();
}

function renderStreamList() {
  const list = $("stream-list");
  const names = [...state.streams.keys()].sort((a, b) =>
    (a.startsWith("sys.") - b.startsWith("sys.")) || a.localeCompare(b));
  const items = [];
  const options = [];
  for (const name of names) {
    const s = state.streams.get(name);
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.type = "button";
    const label = document.createElement("span");
    label.textContent = name;
    const count = document.createElement("span");
    count.className = "count";
    count.textContent = String(s.head || 0);
    b.append(label, count);
    b.setAttribute("aria-current", String(name === state.selected));
    b.addEventListener("click", () => select(name));
    li.append(b);
    items.push(li);
    if (!name.startsWith("sys.")) {
      const o = document.createElement("option");
      o.value = name;
      options.push(o);
    }
  }
  list.replaceChildren(...items);
  $("stream-names").replaceChildren(...options);
}

function eventRow(e) {
  const li = $("event-row").content.firstElementChild.cloneNode(true);
  const pending = e.pendingId !== undefined;
  if (pending) li.classList.add("pending");
  li.dataset.seq = pending ? "" : String(e.seq);
  li.querySelector(".seq").textContent = pending ? "sending…" : `#${e.seq}`;
  const t = li.querySelector("time");
  if (e.ts) {
    t.dateTime = e.ts;
    t.textContent = new Date(e.ts).toLocaleString();
  }
  li.querySelector(".from").textContent = e.from === state.identity.device_id
    ? "this device" : deviceName(e.from);
  const text = bodyText(e.body);
  li.querySelector(".body").textContent = text;
  const copy = li.querySelector(".copy");
  copy.setAttribute("aria-label", `Copy event ${pending ? "" : e.seq}`);
  copy.addEventListener("click", () => copyText(text, copy));
  return li;
}

function renderEvents() {
  const list = $("events");
  const name = state.selected;
  const title = $("events-title");
  if (name === null) {
    list.replaceChildren();
    title.textContent = "No events yet";
    $("older").hidden = true;
    return;
  }
  const s = streamOf(name);
  const ev = s.events;
  // Newest first; only the newest renderLimit rows exist in the DOM.
  const shown = ev.slice(Math.max(0, ev.length - state.renderLimit)).reverse();
  title.textContent = `${name}: ${ev.length} event${ev.length === 1 ? "" : "s"} here, ` +
    `latest #${s.head || 0}`;
  // Only the rows newer than those on show are made, and the oldest fall off the end,
  // when what is on show is otherwise unchanged; anything else renders afresh.
  const r = state.rendered;
  let fresh = 0;
  while (fresh < shown.length && shown[fresh].seq > (r.seqs[0] ?? Infinity)) fresh += 1;
  const rest = shown.slice(fresh);
  const canExtend = r.stream === name && r.seqs.length > 0 && rest.length <= r.seqs.length &&
    s.notices.length === 0 && rest.every((e, i) => e.seq === r.seqs[i]) &&
    shown.every((e) => e.pendingId === undefined);
  if (canExtend) {
    list.prepend(...shown.slice(0, fresh).map(eventRow));
    while (list.children.length > shown.length) list.lastElementChild.remove();
  } else {
    const rows = s.notices.map((text) => {
      const li = document.createElement("li");
      li.className = "event notice-row";
      li.textContent = text;
      return li;
    });
    list.replaceChildren(...shown.map(eventRow), ...rows);
  }
  state.rendered = { stream: name, seqs: shown.map((e) => e.seq), notices: s.notices.length };
  $("older").hidden = ev.length <= state.renderLimit;
}

$("older").addEventListener("click", () => {
  state.renderLimit += RENDER_STEP;
  state.dirty = true;
  schedule();
});

async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    button.textContent = "Copy failed";
  }
  setTimeout(() => { button.textContent = "Copy"; }, 1500);
}

// -- sending ------------------------------------------------------------------------------

$("send-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  send();
});
$("send-body").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
    ev.preventDefault();
    send();
  }
});

function send() {
  const info = $("send-info");
  const stream = $("send-stream").value.trim();
  const raw = $("send-body").value;
  let body;
  if ($("send-mode").value === "json") {
    try {
      body = JSON.parse(raw);
    } catch (exc) {
      info.textContent = `Not JSON: ${exc.message}`;
      return;
    }
  } else {
    if (!raw) {
      info.textContent = "Nothing to send.";
      return;
    }
    body = { text: raw }; // the convention of relaybox client send (docs/client.md)
  }
  const promise = state.client.publish(stream, body);
  const pending = state.client.pending().find((p) => p.stream === stream && p.body === body);
  if (pending) addPending(pending);
  $("send-body").value = "";
  info.textContent = state.client.connected ? "Sending…" : "Queued: sent when connected.";
  if (state.selected !== stream) select(stream);
  promise.then(
    (r) => { info.textContent = `Stored as ${stream} #${r.seq}.`; },
    (exc) => {
      const s = streamOf(stream);
      s.events = s.events.filter((e) => !(e.pendingId && e.body === body));
      state.dirty = true;
      schedule();
      info.textContent = `Not sent: ${exc.message}`;
    });
}

// -- devices ------------------------------------------------------------------------------

let refreshing = null;
let refreshAgain = false; // asked for while a list was on its way: read it once more
let refreshRetry = 0; // failed refreshes in a row: the next try waits longer
async function refreshDevices() {
  if (!state.client) return;
  if (refreshing) {
    // That list may have been read before the change that asks for this one.
    refreshAgain = true;
    return;
  }
  refreshing = (async () => {
    try {
      const list = await state.client.rest.devices();
      refreshRetry = 0;
      state.devices = new Map(list.map((d) => [d.device_id, d]));
      const me = state.devices.get(state.identity.device_id);
      if (me && me.name !== state.identity.name) {
        state.identity.name = me.name;
        $("me").textContent = me.name;
      }
      renderDevices();
      // Rows already on show may name a sender by id (an event that came before this
      // list): render them afresh, not only the new ones.
      state.rendered = NOTHING_RENDERED;
      state.dirty = true;
      schedule();
    } catch {
      // A busy or restarting server: try again (1 s, doubling up to 30 s), so that
      // device names do not wait for the next change of the device list.
      const delay = Math.min(30000, 1000 * 2 ** refreshRetry);
      refreshRetry += 1;
      setTimeout(refreshDevices, delay);
    }
  })();
  await refreshing;
  refreshing = null;
  if (refreshAgain) {
    refreshAgain = false;
    refreshDevices();
  }
}

function onPresence(p) {
  const d = state.devices.get(p.deviceId);
  if (d) {
    d.online = p.online;
    renderDevices();
  } else {
    refreshDevices();
  }
}

function renderDevices() {
  const items = [...state.devices.values()].sort((a, b) => a.name.localeCompare(b.name))
    .map((d) => {
      const li = document.createElement("li");
      li.dataset.deviceId = d.device_id;
      const me = d.device_id === state.identity.device_id;
      const online = me ? state.client && state.client.connected : d.online;
      const dot = document.createElement("span");
      dot.className = `dot${online ? " online" : ""}`;
      dot.setAttribute("aria-hidden", "true");
      const name = document.createElement("strong");
      name.textContent = d.name + (me ? " (this device)" : "");
      const what = document.createElement("span");
      what.className = d.revoked ? "revoked" : "muted small";
      what.textContent = d.revoked ? "revoked" : online ? "online"
        : d.last_seen_at ? `last seen ${new Date(d.last_seen_at).toLocaleString()}` : "never seen";
      li.append(dot, name, what);
      return li;
    });
  $("device-list").replaceChildren(...items);
}

$("add-device").addEventListener("click", async () => {
  const button = $("add-device");
  button.disabled = true;
  try {
    const { code, expires_at: expires } = await state.client.rest.createPairingCode();
    const link = `${server}/app/#pair=${code}`;
    $("invite-link").href = link;
    $("invite-link").textContent = link;
    $("invite-code").textContent = code;
    $("invite-expiry").textContent = `valid until ${new Date(expires).toLocaleTimeString()}`;
    $("invite-qr").replaceChildren(qrSvg(link));
    $("invite").hidden = false;
    $("invite-copy").focus();
  } catch (exc) {
    showNotice(`<p>No pairing code: ${String(exc.message).replace(/</g, "&lt;")}</p>`,
      ["Dismiss", hideNotice]);
  } finally {
    button.disabled = false;
  }
});

$("invite-copy").addEventListener("click", () =>
  copyText($("invite-link").textContent, $("invite-copy")));

function qrSvg(text) {
  // A QR code as SVG made with DOM calls (no inline styles: the page's CSP allows none).
  const qr = qrcode(0, "M");
  qr.addData(text);
  qr.make();
  const n = qr.getModuleCount();
  const margin = 4;
  const size = n + margin * 2;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${size} ${size}`);
  svg.setAttribute("shape-rendering", "crispEdges");
  const bg = document.createElementNS(ns, "rect");
  bg.setAttribute("width", String(size));
  bg.setAttribute("height", String(size));
  bg.setAttribute("fill", "#fff");
  let d = "";
  for (let r = 0; r < n; r += 1) {
    for (let c = 0; c < n; c += 1) {
      if (qr.isDark(r, c)) d += `M${c + margin} ${r + margin}h1v1h-1z`;
    }
  }
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", d);
  path.setAttribute("fill", "#000");
  svg.append(bg, path);
  svg.dataset.text = text;
  return svg;
}

// -- this device ----------------------------------------------------------------------------

$("rename-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const info = $("rename-info");
  const name = $("rename-input").value.trim();
  try {
    await state.client.rest.rename(name);
    state.identity.name = name;
    await store.set("identity", state.identity);
    $("me").textContent = name;
    info.textContent = `Renamed to ${name}.`;
    refreshDevices();
  } catch (exc) {
    info.textContent = `Not renamed: ${exc.detail || exc.message}`;
  }
});

$("notify").addEventListener("change", async (ev) => {
  if (ev.target.checked) {
    if (!("Notification" in window)) {
      ev.target.checked = false;
      return;
    }
    const permission = await Notification.requestPermission();
    state.notify = permission === "granted";
    ev.target.checked = state.notify;
  } else {
    state.notify = false;
  }
  localStorage.setItem("relaybox.notify", state.notify ? "1" : "0");
});

$("forget").addEventListener("click", async () => {
  if (!confirm("Forget this device? It is revoked on the server and its key is deleted " +
               "from this browser; pairing again needs a new code.")) return;
  const client = state.client;
  try {
    // A device may end its own access (docs/api.md "Devices"): revoke, then forget.
    if (client && client.state !== "stopped") {
      await client.rest.request("POST", `/devices/${state.identity.device_id}/revoke`, {});
    }
  } catch (exc) {
    if (exc.status !== 401 && exc.status !== 404 && !confirm(
      `The server could not revoke this device (${exc.message}). Forget it here anyway?`)) {
      return;
    }
  }
  await forgetLocally();
});

async function forgetLocally() {
  const client = state.client;
  state.client = null;
  if (client) await client.close();
  await forgetIdentity(store);
  state.identity = null;
  state.streams.clear();
  state.selected = null;
  state.devices.clear();
  state.rendered = NOTHING_RENDERED;
  $("events").replaceChildren();
  $("stream-list").replaceChildren();
  hideNotice();
  showPairing(null);
}

// -- tabs (arrow keys move between them, as in the ARIA tabs pattern) -------------------------

const tabs = ["tab-streams", "tab-devices", "tab-device"].map($);
function activate(tab) {
  for (const t of tabs) {
    const on = t === tab;
    t.setAttribute("aria-selected", String(on));
    t.tabIndex = on ? 0 : -1;
    $(t.getAttribute("aria-controls")).hidden = !on;
  }
  if (tab.id === "tab-devices") refreshDevices();
}
for (const [i, t] of tabs.entries()) {
  t.addEventListener("click", () => activate(t));
  t.addEventListener("keydown", (ev) => {
    const step = ev.key === "ArrowRight" ? 1 : ev.key === "ArrowLeft" ? -1 : 0;
    if (!step) return;
    const next = tabs[(i + step + tabs.length) % tabs.length];
    activate(next);
    next.focus();
  });
}

// -- network and app shell ----------------------------------------------------------------------

window.addEventListener("online", () => state.client && state.client.nudge());
document.addEventListener("visibilitychange", () => {
  if (!document.hidden && state.client) state.client.nudge();
});
window.addEventListener("pagehide", () => {
  if (state.client) state.client.flushAcks();
});
if ("serviceWorker" in navigator && window.isSecureContext) {
  navigator.serviceWorker.register("sw.js", { scope: "./" }).catch(() => {});
}

main();
