// relaybox.js: the relaybox device SDK for browsers and Node 20+ (docs/client-js.md).
//
// An ES module with no dependencies. It speaks the gateway protocol of docs/protocol.md
// (pairing, the Ed25519 handshake through WebCrypto, publish with retry, catch-up, acks,
// flow control, gap, presence, ping/pong, reconnect) and the device side of the REST API
// (docs/api.md: tokens, devices, pairing codes, history).
//
// The device key is made by crypto.subtle, non-extractable, and kept as a CryptoKey in a
// store: IndexedDB in a browser (IndexedDBStore), anything with async get/set/delete in
// Node (MemoryStore, or one of your own).

export const PROTOCOL_VERSION = 1;
export const GATEWAY_CONTEXT = "relaybox-gateway-v1"; // docs/protocol.md "The signing string"
export const TOKEN_CONTEXT = "relaybox-token-v1"; // docs/api.md "Signing strings"
export const DEFAULT_WINDOW = 256;
export const ACK_DELAY_MS = 100; // docs/protocol.md "Flow control": ack within window/2 or 100 ms
export const STREAM_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/;

// Store keys. One store holds one device.
const K_IDENTITY = "identity";
const K_CURSORS = "cursors";
const K_OUTBOX = "outbox";

// Close codes (docs/protocol.md "Errors and close codes").
export const CloseCode = Object.freeze({
  NORMAL: 1000, GOING_AWAY: 1001, TOO_BIG: 1009, BAD_REQUEST: 4400, AUTH_FAILED: 4401,
  REVOKED: 4403, HANDSHAKE_TIMEOUT: 4408, SESSION_REPLACED: 4409, HEARTBEAT_TIMEOUT: 4410,
  RATE_LIMITED: 4429,
});

// -- errors -------------------------------------------------------------------------------

export class RelayboxError extends Error {
  constructor(message, code = "error") {
    super(message);
    this.name = new.target.name;
    this.code = code;
  }
}

/** WebCrypto is missing: a page on plain http from another address (not a secure context). */
export class InsecureContextError extends RelayboxError {
  constructor() {
    super("this page is not a secure context (https or localhost), so the browser offers " +
          "no WebCrypto; open relaybox over https", "insecure_context");
  }
}

/** The client stopped for good: revoked, auth_failed, session_replaced, server_mismatch… */
export class FatalError extends RelayboxError {}

export class PublishError extends RelayboxError {}

export class ConflictError extends PublishError {
  constructor(stream, headSeq, baseSeq) {
    super(`${stream} is at ${headSeq}, not ${baseSeq}`, "conflict");
    this.stream = stream;
    this.headSeq = headSeq;
    this.baseSeq = baseSeq;
  }
}

export class ApiError extends RelayboxError {
  constructor(status, code, detail) {
    super(`${status} ${code}: ${detail}`, code);
    this.status = status;
    this.detail = detail;
  }
}

export class ClosedError extends RelayboxError {
  constructor(message = "the client was closed") { super(message, "closed"); }
}

const FATAL_MESSAGES = {
  auth_failed: "the server refused this device (unknown device or wrong key)",
  revoked: "this device was revoked",
  session_replaced: "this device connected again elsewhere (another tab or window)",
  unsupported_protocol: "the server does not speak protocol version 1",
  server_mismatch: "the server is not the one this device was paired with",
};
const FATAL_CLOSES = {
  [CloseCode.AUTH_FAILED]: "auth_failed",
  [CloseCode.REVOKED]: "revoked",
  [CloseCode.SESSION_REPLACED]: "session_replaced",
};

// -- encoding (docs/protocol.md "Transport and encoding") --------------------------------

const utf8 = new TextEncoder();

/** base64url without padding (RFC 4648 §5). */
export function b64urlEncode(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 1) s += String.fromCharCode(bytes[i]);
  return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** Strict unpadded base64url of exactly `length` bytes (canonical form); throws otherwise. */
export function b64urlDecode(text, length) {
  if (typeof text !== "string" || text.length !== Math.floor((length * 4 + 2) / 3) ||
      !/^[A-Za-z0-9_-]*$/.test(text)) {
    throw new RelayboxError(`not unpadded base64url of ${length} bytes`, "invalid");
  }
  const bin = atob(text.replace(/-/g, "+").replace(/_/g, "/"));
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i += 1) out[i] = bin.charCodeAt(i);
  if (out.length !== length || b64urlEncode(out) !== text) {
    throw new RelayboxError(`not canonical base64url of ${length} bytes`, "invalid");
  }
  return out;
}

function webcrypto() {
  const c = globalThis.crypto;
  if (!c || !c.subtle) throw new InsecureContextError();
  return c;
}

/** True where WebCrypto (and so relaybox) works: https, localhost, or Node. */
export function secureContextAvailable() {
  return Boolean(globalThis.crypto && globalThis.crypto.subtle);
}

export function randomBytes(n) {
  return webcrypto().getRandomValues(new Uint8Array(n));
}

export function randomNonce(n = 32) {
  return b64urlEncode(randomBytes(n));
}

function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function formatUuid(bytes) {
  const h = hex(bytes);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** A time-ordered UUIDv7 (RFC 9562 §5.7): publish ids (docs/protocol.md "Publishing"). */
export function uuid7(nowMs = Date.now()) {
  const b = randomBytes(16);
  let ms = Math.floor(nowMs);
  for (let i = 5; i >= 0; i -= 1) {
    b[i] = ms % 256;
    ms = Math.floor(ms / 256);
  }
  b[6] = (b[6] & 0x0f) | 0x70;
  b[8] = (b[8] & 0x3f) | 0x80;
  return formatUuid(b);
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

export function isUuid(text, versions = null) {
  if (typeof text !== "string" || !UUID_RE.test(text)) return false;
  return versions === null || versions.includes(parseInt(text[14], 16));
}

export function isValidStream(name) {
  return typeof name === "string" && STREAM_RE.test(name);
}

/** The six lines a device signs in the handshake (docs/protocol.md "The signing string"). */
export function gatewaySigningBytes(serverId, sessionId, deviceId, clientNonce, serverNonce) {
  return utf8.encode([GATEWAY_CONTEXT, serverId, sessionId, deviceId, clientNonce,
    serverNonce].join("\n"));
}

/** The five lines a device signs for an access token (docs/api.md "Signing strings"). */
export function tokenSigningBytes(serverId, deviceId, timestamp, nonce) {
  return utf8.encode([TOKEN_CONTEXT, serverId, deviceId, String(Math.trunc(timestamp)),
    nonce].join("\n"));
}

/** Reconnect delay for retry `attempt` (0-based): half fixed, half random; the ceiling
 * doubles up to `max` seconds. Same rule as relaybox.client (docs/client.md). */
export function backoffDelay(attempt, initial = 0.25, max = 30, random = Math.random) {
  const ceiling = Math.min(max, initial * 2 ** Math.min(attempt, 32));
  return ceiling / 2 + random() * (ceiling / 2);
}

/** `http(s)://host[:port][/prefix]` from any URL a user may paste (ws, /api/v1/gateway…). */
export function normalizeServerUrl(url) {
  let u;
  try {
    u = new URL(String(url).trim());
  } catch {
    throw new RelayboxError(`not a server URL: ${url}`, "invalid");
  }
  const schemes = { "http:": "http:", "https:": "https:", "ws:": "http:", "wss:": "https:" };
  if (!schemes[u.protocol] || !u.hostname) {
    throw new RelayboxError(`not a server URL: ${url}`, "invalid");
  }
  let path = u.pathname.replace(/\/+$/, "");
  for (const suffix of ["/api/v1/gateway", "/api/v1"]) {
    if (path.endsWith(suffix)) {
      path = path.slice(0, -suffix.length);
      break;
    }
  }
  return `${schemes[u.protocol]}//${u.host}${path}`;
}

export function gatewayUrl(server) {
  const base = normalizeServerUrl(server);
  return base.replace(/^http/, "ws") + "/api/v1/gateway";
}

/** `XXXX-XXXX` from what a user typed or a link carried (docs/api.md "Pairing"). */
export function normalizePairingCode(text) {
  const raw = String(text || "").toUpperCase().replace(/[\s-]/g, "");
  if (!/^[0-9A-HJKMNP-TV-Z]{8}$/.test(raw)) {
    throw new RelayboxError("a pairing code has 8 letters and digits, like K7QD-3MXA",
      "invalid");
  }
  return `${raw.slice(0, 4)}-${raw.slice(4)}`;
}

// -- stores -------------------------------------------------------------------------------

/** A store in memory (Node, tests). Values are kept as given (CryptoKey included). */
export class MemoryStore {
  constructor(initial = {}) { this.map = new Map(Object.entries(initial)); }
  async get(key) { return this.map.get(key); }
  async set(key, value) { this.map.set(key, value); }
  async delete(key) { this.map.delete(key); }
}

/** A store in IndexedDB (browsers): a non-extractable CryptoKey is kept as it is. */
export class IndexedDBStore {
  constructor(name = "relaybox", table = "kv") {
    this.name = name;
    this.table = table;
    this._db = null;
  }

  _open() {
    if (!this._db) {
      this._db = new Promise((resolve, reject) => {
        const req = indexedDB.open(this.name, 1);
        req.onupgradeneeded = () => req.result.createObjectStore(this.table);
        req.onsuccess = () => resolve(req.result);
        req.onerror = () => reject(req.error);
      });
    }
    return this._db;
  }

  async _run(mode, fn) {
    const db = await this._open();
    return new Promise((resolve, reject) => {
      const tx = db.transaction(this.table, mode);
      const req = fn(tx.objectStore(this.table));
      tx.oncomplete = () => resolve(req.result);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  }

  get(key) { return this._run("readonly", (s) => s.get(key)); }
  set(key, value) { return this._run("readwrite", (s) => s.put(value, key)); }
  delete(key) { return this._run("readwrite", (s) => s.delete(key)); }
}

// -- identity and pairing -----------------------------------------------------------------

/** A new Ed25519 key pair; the private half is non-extractable unless asked otherwise. */
export async function generateDeviceKey({ extractable = false } = {}) {
  const subtle = webcrypto().subtle;
  const pair = await subtle.generateKey({ name: "Ed25519" }, extractable, ["sign", "verify"]);
  const raw = new Uint8Array(await subtle.exportKey("raw", pair.publicKey));
  return { privateKey: pair.privateKey, publicKey: b64urlEncode(raw) };
}

/** Ed25519 signature of `bytes` as base64url. */
export async function sign(privateKey, bytes) {
  const sig = await webcrypto().subtle.sign({ name: "Ed25519" }, privateKey, bytes);
  return b64urlEncode(new Uint8Array(sig));
}

async function problem(resp) {
  let code = "http_error";
  let detail = resp.statusText || `HTTP ${resp.status}`;
  try {
    const doc = await resp.json();
    if (doc && typeof doc === "object") {
      code = String(doc.code || code);
      detail = String(doc.detail || doc.title || detail);
    }
  } catch { /* not problem+json */ }
  return new ApiError(resp.status, code, detail);
}

function fetchOf(options) {
  const f = options.fetch || globalThis.fetch;
  if (!f) throw new RelayboxError("no fetch() here: pass options.fetch", "unsupported");
  return (...args) => f(...args);
}

/** What a pairing code offers (user name, inviting device), without using it. */
export async function lookupPairing(server, code, options = {}) {
  const base = normalizeServerUrl(server);
  const resp = await fetchOf(options)(
    `${base}/api/v1/pairing/lookup/${encodeURIComponent(normalizePairingCode(code))}`);
  if (!resp.ok) throw await problem(resp);
  return resp.json();
}

/**
 * Claim a pairing code with a new key and keep the identity in `store`.
 * docs/api.md: POST /api/v1/pairing/claim {code, public_key, name} → {device_id, user_id,
 * server_id}. Only the public half of the key leaves the device.
 */
export async function pair(server, code, name, options = {}) {
  const store = options.store;
  if (!store) throw new RelayboxError("pair() needs options.store", "invalid");
  const base = normalizeServerUrl(server);
  const trimmed = String(name || "").trim();
  if (!trimmed) throw new RelayboxError("the device name is empty", "invalid");
  const key = await generateDeviceKey({ extractable: Boolean(options.extractable) });
  const resp = await fetchOf(options)(`${base}/api/v1/pairing/claim`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ code: normalizePairingCode(code), public_key: key.publicKey,
      name: trimmed }),
  });
  if (resp.status !== 201) throw await problem(resp);
  const doc = await resp.json();
  for (const k of ["device_id", "user_id", "server_id"]) {
    if (!isUuid(doc[k])) throw new ApiError(resp.status, "bad_response", `no ${k} in answer`);
  }
  const identity = {
    version: 1, server: base, server_id: doc.server_id, device_id: doc.device_id,
    user_id: doc.user_id, name: trimmed, public_key: key.publicKey, private_key: key.privateKey,
  };
  await store.set(K_CURSORS, { device_id: identity.device_id, streams: {} });
  await store.set(K_OUTBOX, []);
  await store.set(K_IDENTITY, identity);
  return identity;
}

/** The identity kept in `store`, or null. */
export async function loadIdentity(store) {
  const identity = await store.get(K_IDENTITY);
  return identity && identity.device_id && identity.private_key ? identity : null;
}

/** Remove the identity, positions and unsent publishes from `store` (the key is gone). */
export async function forgetIdentity(store) {
  await store.delete(K_OUTBOX);
  await store.delete(K_CURSORS);
  await store.delete(K_IDENTITY);
}

// -- REST with tokens ---------------------------------------------------------------------

const TOKEN_MARGIN_MS = 30_000;

/** Authenticated calls of /api/v1 for one device: tokens signed, cached and refreshed. */
export class RestClient {
  constructor(identity, options = {}) {
    this.identity = identity;
    this._fetch = fetchOf(options);
    this._now = options.now || (() => Date.now());
    this.accessToken = null;
    this.refreshToken = null;
    this.expiresAt = 0;
    this._pending = null;
  }

  url(path) { return `${this.identity.server}/api/v1${path}`; }

  async _post(path, body) {
    return this._fetch(this.url(path), {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
  }

  async _take(resp) {
    if (resp.status !== 200) throw await problem(resp);
    const doc = await resp.json();
    if (typeof doc.access_token !== "string") {
      throw new ApiError(resp.status, "bad_response", "no access token in answer");
    }
    this.accessToken = doc.access_token;
    this.refreshToken = typeof doc.refresh_token === "string" ? doc.refresh_token : null;
    const life = typeof doc.expires_in === "number" ? doc.expires_in : 60;
    this.expiresAt = this._now() + life * 1000;
    return this.accessToken;
  }

  /** A new token pair by signing relaybox-token-v1 (docs/api.md "Signing strings"). */
  async authenticate() {
    const id = this.identity;
    const timestamp = Math.floor(this._now() / 1000);
    const nonce = randomNonce(24);
    const signature = await sign(id.private_key,
      tokenSigningBytes(id.server_id, id.device_id, timestamp, nonce));
    return this._take(await this._post("/auth/token",
      { device_id: id.device_id, timestamp, nonce, signature }));
  }

  /** A valid access token: cached, refreshed before expiry (refresh tokens work once). */
  token() {
    if (this.accessToken && this._now() < this.expiresAt - TOKEN_MARGIN_MS) {
      return Promise.resolve(this.accessToken);
    }
    // One token request at a time: parallel refreshes would spend the token twice.
    if (!this._pending) {
      this._pending = this._renew().finally(() => { this._pending = null; });
    }
    return this._pending;
  }

  async _renew() {
    if (this.refreshToken) {
      const refresh = this.refreshToken;
      this.refreshToken = null;
      try {
        return await this._take(await this._post("/auth/refresh", { refresh_token: refresh }));
      } catch (exc) {
        if (!(exc instanceof ApiError) || exc.status !== 401) throw exc;
      }
    }
    return this.authenticate();
  }

  /** An authenticated call of /api/v1{path}; its JSON answer, ApiError on failure. */
  async request(method, path, body = undefined) {
    let resp;
    for (let attempt = 0; attempt < 2; attempt += 1) {
      const token = await this.token();
      const init = { method, headers: { Authorization: `Bearer ${token}` } };
      if (body !== undefined) {
        init.headers["Content-Type"] = "application/json";
        init.body = JSON.stringify(body);
      }
      resp = await this._fetch(this.url(path), init);
      if (resp.status === 401 && attempt === 0) {
        this.accessToken = null; // invalidated on the server: one fresh try
        continue;
      }
      break;
    }
    if (resp.status >= 400) throw await problem(resp);
    const text = await resp.text();
    return text ? JSON.parse(text) : null;
  }

  devices() { return this.request("GET", "/devices"); }
  rename(name) {
    return this.request("PATCH", `/devices/${this.identity.device_id}`, { name });
  }
  /** A pairing code for another device of this user (POST /api/v1/pairing/store). */
  createPairingCode(options = {}) { return this.request("POST", "/pairing/store", options); }
  streams() { return this.request("GET", "/streams"); }
  /** Stored events of a stream after `after` (at most `limit`, ≤ 1000). */
  history(stream, after = 0, limit = 100) {
    return this.request("GET",
      `/streams/${encodeURIComponent(stream)}/events?after=${after}&limit=${limit}`);
  }
}

// -- positions: duplicates, cumulative acks, the persisted cursor ------------------------

/**
 * What the application has of each stream (docs/protocol.md "Delivery and
 * acknowledgements"). `delivered` drops repeats (delivery is at least once); `received`
 * and `acked` belong to the current session, because the server clamps an ack to what
 * it sent on that session.
 */
export class Positions {
  constructor(initial = {}) {
    this.delivered = { ...initial };
    this.received = {};
    this.acked = {};
    this.unacked = 0;
    this.dirty = false;
  }

  newSession(heads) {
    this.received = {};
    this.acked = {};
    this.unacked = 0;
    for (const [stream, head] of Object.entries(heads || {})) {
      // A server behind what we hold (restored from an older backup) would otherwise
      // have all its new events dropped as repeats.
      if (Number.isInteger(head) && (this.delivered[stream] || 0) > head) {
        this.delivered[stream] = head;
        this.dirty = true;
      }
    }
  }

  receive(stream, seq) {
    if (seq > (this.received[stream] || 0)) this.received[stream] = seq;
  }

  isDuplicate(stream, seq) { return seq <= (this.delivered[stream] || 0); }

  done(stream, seq) {
    if (seq > (this.delivered[stream] || 0)) {
      this.delivered[stream] = seq;
      this.dirty = true;
    }
    this.unacked += 1;
  }

  acksDue() {
    const out = [];
    for (const [stream, seq] of Object.entries(this.delivered)) {
      const value = Math.min(seq, this.received[stream] || 0);
      if (value > (this.acked[stream] || 0)) {
        this.acked[stream] = value;
        out.push([stream, value]);
      }
    }
    this.unacked = 0;
    return out;
  }
}

// -- the gateway client -------------------------------------------------------------------

function parseFrame(data) {
  // docs/protocol.md "Transport and encoding": one JSON object with a string type.
  if (typeof data !== "string") return null;
  try {
    const msg = JSON.parse(data);
    return msg && typeof msg === "object" && !Array.isArray(msg) &&
      typeof msg.type === "string" ? msg : null;
  } catch {
    return null;
  }
}

function publishFrame(stream, body, key, baseSeq, id) {
  if (!isValidStream(stream)) throw new PublishError(`${stream} is not a stream name`, "invalid");
  if (stream.startsWith("sys.")) {
    throw new PublishError("sys. streams are written only by the server", "forbidden");
  }
  if (baseSeq != null && (!Number.isInteger(baseSeq) || baseSeq < 0)) {
    throw new PublishError("baseSeq must be an integer >= 0", "invalid");
  }
  if (key != null && typeof key !== "string") throw new PublishError("key: a string", "invalid");
  if (!isUuid(id, [4, 7])) throw new PublishError("id must be a UUIDv4 or UUIDv7", "invalid");
  const msg = { type: "publish", id, stream, body };
  if (key != null) msg.key = key;
  if (baseSeq != null) msg.base_seq = baseSeq;
  const frame = JSON.stringify(msg);
  if (frame === undefined) throw new PublishError("body is not JSON", "invalid");
  return frame;
}

/**
 * A device connection to relaybox that survives disconnects.
 *
 *   const client = new Client(identity, { store });
 *   client.on("event", (e) => console.log(e.stream, e.seq, e.body));
 *   await client.start();
 *   const { seq } = await client.publish("clipboard", { text: "hi" });
 *
 * Listeners: "event", "gap", "presence", "synced", "welcome", "ack" (any stored publish,
 * restored ones included), "state" (idle, connecting, connected, waiting, stopped),
 * "fatal" (the client stopped for good), "error" (a non-fatal server error).
 */
export class Client {
  constructor(identity, options = {}) {
    if (!identity || !identity.device_id) throw new RelayboxError("no identity", "invalid");
    this.identity = identity;
    this.store = options.store || new MemoryStore();
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    this.backoffInitial = options.backoffInitial ?? 0.25;
    this.backoffMax = options.backoffMax ?? 30;
    this.openTimeout = options.openTimeout ?? 10;
    this.random = options.random || Math.random;
    this.timers = options.timers || globalThis; // setTimeout / clearTimeout
    this.now = options.now || (() => Date.now());
    this.rest = new RestClient(identity, options);
    this.url = gatewayUrl(identity.server);
    this.state = "idle";
    this.welcome = null;
    this.synced = false;
    this.sessions = 0;
    this.lastError = null;
    this.fatal = null;
    this.window = DEFAULT_WINDOW;
    this.positions = new Positions();
    this.stats = { received: 0, duplicates: 0, sent: 0 };
    this._listeners = new Map();
    this._pending = new Map(); // publish id → pending publish (docs/protocol.md "Publishing")
    this._ws = null;
    this._attempt = 0;
    this._retryTimer = null;
    this._ackTimer = null;
    this._pingTimer = null;
    this._openTimer = null;
    this._lastFrameAt = 0;
    this._pings = new Map();
    this._pingRef = 0;
    this._saving = null;
    this._outboxSaving = null;
    this._closing = false;
    this._handshakeFatal = null;
  }

  // -- listeners ------------------------------------------------------------------------
  on(type, fn) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(fn);
    return () => this._listeners.get(type).delete(fn);
  }

  _emit(type, detail) {
    for (const fn of [...(this._listeners.get(type) || [])]) {
      try {
        fn(detail);
      } catch (exc) {
        // A listener's failure must not cut the connection.
        if (type !== "error") this._emit("error", { code: "listener", message: String(exc) });
      }
    }
  }

  _setState(state) {
    if (this.state !== state) {
      this.state = state;
      this._emit("state", state);
    }
  }

  get connected() { return this.state === "connected"; }
  /** True while a reconnect is scheduled (false once stopped). */
  get reconnectScheduled() { return this._retryTimer !== null; }

  // -- lifecycle --------------------------------------------------------------------------
  /** Load positions and unsent publishes from the store, then connect in the background. */
  async start() {
    if (!this.WebSocket) throw new RelayboxError("no WebSocket here: pass options.WebSocket");
    webcrypto();
    const cursors = await this.store.get(K_CURSORS);
    if (cursors && cursors.device_id === this.identity.device_id && cursors.streams) {
      this.positions = new Positions(cursors.streams);
    }
    const outbox = (await this.store.get(K_OUTBOX)) || [];
    for (const p of outbox) {
      if (!this._pending.has(p.id)) this._track(p, null);
    }
    this._connect();
  }

  /** Send the due acks, save positions, close normally (1000). */
  async close() {
    if (this._closing) return;
    this._closing = true;
    this.flushAcks();
    if (this.connected) {
      // The server handles frames in order: its pong proves it read our acks
      // (docs/protocol.md "Reconnecting and resuming").
      try {
        await Promise.race([this.ping(), new Promise((r) => this.timers.setTimeout(r, 2000))]);
      } catch { /* closing anyway */ }
    }
    await this._saveCursors();
    this._stop(null);
  }

  /** Reconnect now if waiting (e.g. the network came back). */
  nudge() {
    if (this._retryTimer !== null) {
      this.timers.clearTimeout(this._retryTimer);
      this._retryTimer = null;
      this._connect();
    }
  }

  _stop(fatal) {
    this._clearTimers();
    if (this._retryTimer !== null) this.timers.clearTimeout(this._retryTimer);
    this._retryTimer = null;
    const ws = this._ws;
    this._ws = null;
    if (ws && ws.readyState <= 1) {
      try { ws.close(CloseCode.NORMAL); } catch { /* already closing */ }
    }
    const err = fatal || new ClosedError();
    for (const p of this._pending.values()) {
      if (p.timer) this.timers.clearTimeout(p.timer);
      if (p.reject) p.reject(err);
    }
    this._pending.clear();
    for (const w of this._pings.values()) w.reject(err);
    this._pings.clear();
    if (fatal) {
      this.fatal = fatal;
      this._emit("fatal", fatal);
    }
    this._setState("stopped");
  }

  _clearTimers() {
    for (const name of ["_ackTimer", "_pingTimer", "_openTimer"]) {
      if (this[name] !== null) {
        this.timers.clearTimeout(this[name]);
        this[name] = null;
      }
    }
  }

  // -- connecting (docs/protocol.md "The handshake") --------------------------------------
  _connect() {
    if (this._closing || this.state === "stopped") return;
    this._setState("connecting");
    let ws;
    try {
      ws = new this.WebSocket(this.url);
    } catch (exc) {
      this.lastError = String(exc);
      this._retry();
      return;
    }
    this._ws = ws;
    const session = { nonce: randomNonce(), ready: false };
    this._openTimer = this.timers.setTimeout(() => {
      this.lastError = "the handshake took too long";
      try { ws.close(); } catch { /* closing anyway */ }
      this._lost(ws, 4408);
    }, this.openTimeout * 1000);
    ws.onopen = () => {
      ws.send(JSON.stringify({ type: "hello", protocol: PROTOCOL_VERSION,
        device_id: this.identity.device_id, nonce: session.nonce }));
    };
    ws.onmessage = (ev) => {
      if (this._ws !== ws) return;
      this._lastFrameAt = this.now();
      const msg = parseFrame(ev.data);
      if (msg === null) return;
      if (session.ready) this._dispatch(msg);
      else this._handshake(ws, session, msg);
    };
    ws.onerror = () => { this.lastError = "the connection failed"; };
    ws.onclose = (ev) => this._lost(ws, ev.code, ev.reason);
  }

  async _handshake(ws, session, msg) {
    const id = this.identity;
    if (msg.type === "challenge") {
      // Never sign for a server we were not paired with (docs/protocol.md step 2).
      if (msg.server_id !== id.server_id) {
        this._stop(new FatalError(FATAL_MESSAGES.server_mismatch, "server_mismatch"));
        return;
      }
      try {
        const signature = await sign(id.private_key, gatewaySigningBytes(
          msg.server_id, msg.session_id, id.device_id, session.nonce, msg.nonce));
        if (this._ws === ws) ws.send(JSON.stringify({ type: "auth", signature }));
      } catch (exc) {
        this._stop(new FatalError(`cannot sign with the device key: ${exc}`, "key_unusable"));
      }
    } else if (msg.type === "welcome") {
      session.ready = true;
      this._ready(msg);
    } else if (msg.type === "error") {
      const code = String(msg.code);
      // unsupported_protocol comes with 4400, which alone would be retried.
      if (code === "unsupported_protocol") this._handshakeFatal = code;
      this.lastError = `${code}: ${msg.message || ""}`;
    }
    // Other types: a newer server may add messages; ignore them.
  }

  _ready(welcome) {
    if (this._openTimer !== null) {
      this.timers.clearTimeout(this._openTimer);
      this._openTimer = null;
    }
    this.sessions += 1;
    this._attempt = 0;
    this.welcome = welcome;
    this.synced = false;
    this.lastError = null;
    this.window = Number.isInteger(welcome.window) && welcome.window > 0
      ? welcome.window : DEFAULT_WINDOW;
    this.positions.newSession(welcome.streams || {});
    this._setState("connected");
    this._emit("welcome", welcome);
    // Send every publish that has no ack yet, with its original id (docs/protocol.md
    // "Reconnecting and resuming" step 2).
    for (const p of this._pending.values()) {
      if (p.state !== "waiting") this._sendPublish(p);
    }
    this._schedulePing(welcome.heartbeat_s);
  }

  _schedulePing(heartbeat) {
    // docs/protocol.md "Liveness": an app-level ping every heartbeat_s. A connection that
    // has brought nothing for twice that (a sleeping phone, a dead NAT) is given up.
    const period = (typeof heartbeat === "number" && heartbeat > 0 ? heartbeat : 20) * 1000;
    const tick = () => {
      this._pingTimer = null;
      if (!this.connected) return;
      if (this.now() - this._lastFrameAt > 2 * period) {
        this.lastError = "nothing heard from the server for too long";
        const ws = this._ws;
        try { ws.close(); } catch { /* closing anyway */ }
        this._lost(ws, CloseCode.HEARTBEAT_TIMEOUT);
        return;
      }
      this.ping().catch(() => {});
      this._pingTimer = this.timers.setTimeout(tick, period);
    };
    this._pingTimer = this.timers.setTimeout(tick, period);
  }

  _lost(ws, code, reason = "") {
    if (this._ws !== ws || ws === null) return;
    this._ws = null;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    this._clearTimers();
    for (const p of this._pending.values()) if (p.state === "sent") p.state = "queued";
    for (const w of this._pings.values()) w.reject(new ClosedError("connection lost"));
    this._pings.clear();
    this._saveCursors();
    if (this._closing || this.state === "stopped") return;
    const fatal = FATAL_CLOSES[code] || this._handshakeFatal;
    if (fatal) {
      this._stop(new FatalError(FATAL_MESSAGES[fatal], fatal));
      return;
    }
    this.lastError = this.lastError || `connection closed (${code}${reason ? " " + reason : ""})`;
    this._retry();
  }

  _retry() {
    const delay = backoffDelay(this._attempt, this.backoffInitial, this.backoffMax, this.random);
    this._attempt += 1;
    this._setState("waiting");
    this.retryIn = delay;
    this._retryTimer = this.timers.setTimeout(() => {
      this._retryTimer = null;
      this._connect();
    }, delay * 1000);
  }

  _send(frame) {
    if (!this.connected || !this._ws) return false;
    this._ws.send(frame);
    return true;
  }

  // -- receiving --------------------------------------------------------------------------
  _dispatch(msg) {
    switch (msg.type) {
      case "event": return this._event(msg);
      case "gap": return this._gap(msg);
      case "ack": return this._acked(msg);
      case "nack": return this._nacked(msg);
      case "synced":
        this.synced = true;
        return this._emit("synced", msg.streams || {});
      case "presence":
        if (typeof msg.device_id === "string") {
          this._emit("presence", { deviceId: msg.device_id, online: Boolean(msg.online) });
        }
        return undefined;
      case "pong": {
        const w = this._pings.get(msg.ref);
        if (w) {
          this._pings.delete(msg.ref);
          w.resolve(this.now() - w.at);
        }
        return undefined;
      }
      case "error":
        return this._emit("error", { code: msg.code, message: msg.message });
      default:
        return undefined; // docs/protocol.md: ignore what a newer server adds
    }
  }

  _event(msg) {
    const { stream, seq } = msg;
    if (!isValidStream(stream) || !Number.isInteger(seq)) return;
    this.stats.received += 1;
    this.positions.receive(stream, seq);
    if (this.positions.isDuplicate(stream, seq)) {
      // At least once (docs/protocol.md "Delivery"): already handed out; ack it again.
      this.stats.duplicates += 1;
    } else {
      const event = { stream, seq, id: msg.id, from: msg.from ?? null, key: msg.key ?? null,
        ts: msg.ts, body: msg.body };
      this._emit("event", event);
    }
    this._done(stream, seq);
  }

  _gap(msg) {
    const { stream, after, next } = msg;
    if (!isValidStream(stream) || !Number.isInteger(next)) return;
    // The server moved past the hole: acking next - 1 is accepted (docs/protocol.md gap).
    this.positions.receive(stream, next - 1);
    this._emit("gap", { stream, after, next });
    this._done(stream, next - 1);
  }

  _done(stream, seq) {
    this.positions.done(stream, seq);
    if (this.positions.unacked >= Math.max(1, Math.floor(this.window / 2))) {
      this.flushAcks();
    } else if (this._ackTimer === null) {
      this._ackTimer = this.timers.setTimeout(() => this.flushAcks(), ACK_DELAY_MS);
    }
  }

  /** Send the due cumulative acks now and save the cursors. */
  flushAcks() {
    if (this._ackTimer !== null) {
      this.timers.clearTimeout(this._ackTimer);
      this._ackTimer = null;
    }
    if (this.connected) {
      for (const [stream, seq] of this.positions.acksDue()) {
        this._send(JSON.stringify({ type: "ack", stream, seq }));
      }
    }
    if (this.positions.dirty) this._saveCursors();
  }

  _saveCursors() {
    // One save at a time; a save that ends finds newer positions and writes again.
    if (this._saving) {
      this._saveAgain = true;
      return this._saving;
    }
    if (!this.positions.dirty) return Promise.resolve();
    this.positions.dirty = false;
    const doc = { device_id: this.identity.device_id, streams: { ...this.positions.delivered } };
    this._saving = Promise.resolve(this.store.set(K_CURSORS, doc))
      .catch((exc) => this._emit("error", { code: "store", message: String(exc) }))
      .finally(() => {
        this._saving = null;
        if (this._saveAgain) {
          this._saveAgain = false;
          this._saveCursors();
        }
      });
    return this._saving;
  }

  /** The per-stream positions this device has handled (what the store keeps). */
  cursors() { return { ...this.positions.delivered }; }

  // -- publishing (docs/protocol.md "Publishing") -----------------------------------------
  /**
   * Store an event; resolves `{id, stream, seq, ts}` once the server acked it. Kept (in
   * the store too) and sent again with the same id after every reconnect until acked, so
   * it is stored once. Rejects with ConflictError (baseSeq behind) or PublishError.
   */
  publish(stream, body, { key = null, baseSeq = null, id = null } = {}) {
    if (this.state === "stopped") {
      return Promise.reject(this.fatal || new ClosedError());
    }
    const pid = id || uuid7(this.now());
    let frame;
    try {
      frame = publishFrame(stream, body, key, baseSeq, pid);
    } catch (exc) {
      return Promise.reject(exc);
    }
    const existing = this._pending.get(pid);
    if (existing) return existing.promise;
    const p = this._track({ id: pid, stream, body, key, base_seq: baseSeq }, frame);
    this._saveOutbox();
    if (this.connected) this._sendPublish(p);
    return p.promise;
  }

  /** Publishes not acked yet (also those restored from the store after a reload). */
  pending() {
    return [...this._pending.values()].map((p) => ({ ...p.record }));
  }

  _track(record, frame) {
    const p = { id: record.id, record, state: "queued", retries: 0, timer: null,
      frame: frame || publishFrame(record.stream, record.body, record.key, record.base_seq,
        record.id) };
    p.promise = new Promise((resolve, reject) => {
      p.resolve = resolve;
      p.reject = reject;
    });
    p.promise.catch(() => {}); // restored publishes may have nobody waiting
    this._pending.set(p.id, p);
    return p;
  }

  _sendPublish(p) {
    if (this._send(p.frame)) {
      p.state = "sent";
      this.stats.sent += 1;
    }
  }

  _saveOutbox() {
    const records = [...this._pending.values()].map((p) => p.record);
    const prev = this._outboxSaving || Promise.resolve();
    this._outboxSaving = prev.then(() => this.store.set(K_OUTBOX, records))
      .catch((exc) => this._emit("error", { code: "store", message: String(exc) }));
    return this._outboxSaving;
  }

  _acked(msg) {
    const p = this._pending.get(msg.id);
    if (!p) return; // the ack of a repeat we already had
    this._forget(p);
    const result = { id: msg.id, stream: msg.stream, seq: msg.seq, ts: msg.ts };
    this._emit("ack", { ...result, body: p.record.body, key: p.record.key });
    p.resolve(result);
  }

  _nacked(msg) {
    const p = this._pending.get(msg.id);
    if (!p) return;
    const code = String(msg.code);
    if (code === "rate_limited" || code === "unavailable") {
      // Not stored: safe to send again with the same id.
      const delay = code === "rate_limited" && Number.isInteger(msg.retry_after_ms)
        ? msg.retry_after_ms / 1000 : backoffDelay(p.retries, 0.1, 5, this.random);
      p.retries += 1;
      p.state = "waiting";
      p.timer = this.timers.setTimeout(() => {
        p.timer = null;
        if (this._pending.get(p.id) !== p) return;
        p.state = "queued";
        this._sendPublish(p);
      }, delay * 1000);
      return;
    }
    this._forget(p);
    p.reject(code === "conflict"
      ? new ConflictError(msg.stream || p.record.stream, msg.head_seq, p.record.base_seq)
      : new PublishError(String(msg.message || code), code));
  }

  _forget(p) {
    if (p.timer) this.timers.clearTimeout(p.timer);
    this._pending.delete(p.id);
    this._saveOutbox();
  }

  // -- ping -------------------------------------------------------------------------------
  /** A round trip through the server (docs/protocol.md "Liveness"); resolves its ms. */
  ping() {
    if (!this.connected) return Promise.reject(new ClosedError("not connected"));
    this._pingRef += 1;
    const ref = this._pingRef;
    return new Promise((resolve, reject) => {
      this._pings.set(ref, { resolve, reject, at: this.now() });
      this._send(JSON.stringify({ type: "ping", ref }));
    });
  }
}
