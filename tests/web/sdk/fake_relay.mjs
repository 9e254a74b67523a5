// A relay in memory for the SDK's unit tests: it plays the server side of
// docs/protocol.md over a fake WebSocket (handshake with real Ed25519 checks, publish
// with idempotent ids, cumulative acks, pings), so the tests can drop connections,
// repeat events and inspect every frame the client sent.

import { b64urlDecode, gatewaySigningBytes, randomNonce } from "../../../relaybox/web/sdk/relaybox.js";

export class FakeRelay {
  constructor() {
    this.serverId = "01a213ec-2790-704e-adba-582b4cff3309";
    this.devices = new Map(); // device_id → {publicKey, revoked}
    this.stored = new Map(); // `${device}:${id}` → {stream, seq}
    this.heads = {};
    this.cursors = {}; // device_id → {stream: seq}
    this.sockets = [];
    this.frames = []; // every frame any client sent: {socket, msg}
    this.connections = 0;
    this.waiters = [];
    const relay = this;
    this.WebSocket = class FakeWebSocket {
      constructor(url) {
        this.url = url;
        this.readyState = 0;
        this.session = { state: "hello" };
        relay.sockets.push(this);
        relay.connections += 1;
        queueMicrotask(() => {
          if (this.readyState !== 0) return;
          this.readyState = 1;
          if (this.onopen) this.onopen({});
        });
      }

      send(data) {
        if (this.readyState !== 1) throw new Error("send on a socket that is not open");
        relay._receive(this, JSON.parse(data));
      }

      close(code = 1000) {
        if (this.readyState >= 2) return;
        this.readyState = 3;
        queueMicrotask(() => this.onclose && this.onclose({ code, reason: "" }));
      }
    };
  }

  addDevice(deviceId, publicKey) {
    this.devices.set(deviceId, { publicKey, revoked: false });
  }

  get live() {
    return this.sockets.filter((s) => s.readyState === 1 && s.session.state === "ready");
  }

  push(ws, msg) {
    if (ws.readyState === 1 && ws.onmessage) ws.onmessage({ data: JSON.stringify(msg) });
  }

  /** The server side closes (1001 restart, 4403 revoked, or a dropped network). */
  drop(ws, code = 1001) {
    if (ws.readyState >= 2) return;
    ws.readyState = 3;
    if (ws.onclose) ws.onclose({ code, reason: "" });
  }

  /** Resolve once clients have sent `count` frames of `type` in all. */
  waitSent(type, count) {
    return new Promise((resolve) => {
      const check = () => {
        if (this.sent(type).length >= count) resolve(this.sent(type));
        else this.waiters.push(check);
      };
      check();
    });
  }

  sent(type) {
    return this.frames.filter((f) => f.msg.type === type).map((f) => f.msg);
  }

  async _receive(ws, msg) {
    this.frames.push({ socket: ws, msg });
    const waiters = this.waiters.splice(0);
    for (const w of waiters) w();
    const s = ws.session;
    if (s.state === "hello") {
      s.hello = msg;
      s.id = crypto.randomUUID();
      s.nonce = randomNonce();
      s.state = "auth";
      this.push(ws, { type: "challenge", session_id: s.id, server_id: this.serverId,
        nonce: s.nonce });
    } else if (s.state === "auth") {
      const dev = this.devices.get(s.hello.device_id);
      const bytes = gatewaySigningBytes(this.serverId, s.id, s.hello.device_id,
        s.hello.nonce, s.nonce);
      let ok = false;
      if (dev) {
        const key = await crypto.subtle.importKey("raw", b64urlDecode(dev.publicKey, 32),
          { name: "Ed25519" }, false, ["verify"]);
        ok = await crypto.subtle.verify({ name: "Ed25519" }, key,
          b64urlDecode(msg.signature, 64), bytes);
      }
      if (!ok) {
        this.push(ws, { type: "error", code: "auth_failed" });
        this.drop(ws, 4401);
        return;
      }
      if (dev.revoked) {
        this.push(ws, { type: "error", code: "revoked" });
        this.drop(ws, 4403);
        return;
      }
      s.state = "ready";
      s.device = s.hello.device_id;
      this.push(ws, { type: "welcome", session_id: s.id, user_id: "u", device_id: s.device,
        heartbeat_s: 20, window: this.window || 256, max_body_bytes: 65536,
        streams: { ...this.heads } });
    } else if (msg.type === "publish") {
      const k = `${s.device}:${msg.id}`;
      let rec = this.stored.get(k);
      if (!rec) {
        // docs/protocol.md "Publishing": a repeated id is not stored again.
        const seq = (this.heads[msg.stream] || 0) + 1;
        this.heads[msg.stream] = seq;
        rec = { stream: msg.stream, seq, body: msg.body };
        this.stored.set(k, rec);
      }
      if (!this.holdAcks) {
        this.push(ws, { type: "ack", id: msg.id, stream: rec.stream, seq: rec.seq,
          ts: "2026-12-02T00:00:00.000Z" });
      }
    } else if (msg.type === "ack") {
      const c = this.cursors[s.device] || (this.cursors[s.device] = {});
      c[msg.stream] = Math.max(c[msg.stream] || 0, msg.seq);
    } else if (msg.type === "ping") {
      this.push(ws, { type: "pong", ref: msg.ref });
    }
  }

  event(ws, stream, seq, body = { n: seq }) {
    this.push(ws, { type: "event", stream, seq, id: crypto.randomUUID(),
      from: "01a213ec-27a0-7b11-9f00-000000000000", key: null,
      ts: "2026-12-02T00:00:00.000Z", body });
  }
}

/** Resolve when `client` emits `type` with a detail that `pred` accepts. */
export function once(client, type, pred = () => true) {
  return new Promise((resolve) => {
    const off = client.on(type, (detail) => {
      if (pred(detail)) {
        off();
        resolve(detail);
      }
    });
  });
}

/** Resolve once `fn()` is true, checked after every turn of the event loop. */
export async function until(fn, turns = 10000) {
  for (let i = 0; i < turns; i += 1) {
    if (await fn()) return;
    await new Promise((r) => setImmediate(r));
  }
  throw new Error("condition never became true");
}
