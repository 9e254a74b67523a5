// Unit tests of relaybox.js under Node's test runner: `node --test tests/web/sdk/`.
// Signing strings and signatures are checked against vectors made by the Python protocol
// core (tests/web/vectors.py); the client is driven by a relay in memory (fake_relay.mjs).

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import {
  Client, ConflictError, MemoryStore, Positions, b64urlDecode, b64urlEncode, backoffDelay,
  forgetIdentity, gatewaySigningBytes, gatewayUrl, generateDeviceKey, loadIdentity,
  normalizePairingCode, normalizeServerUrl, sign, tokenSigningBytes, uuid7,
} from "../../../relaybox/web/sdk/relaybox.js";
import { FakeRelay, once, until } from "./fake_relay.mjs";

const vectors = JSON.parse(readFileSync(new URL("./vectors.json", import.meta.url), "utf8"));
const PKCS8_ED25519_PREFIX = Uint8Array.from(
  [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20]);

async function importSeed(seed) {
  const der = new Uint8Array(48);
  der.set(PKCS8_ED25519_PREFIX);
  der.set(b64urlDecode(seed, 32), 16);
  return crypto.subtle.importKey("pkcs8", der, { name: "Ed25519" }, false, ["sign"]);
}

// -- bytes against the Python implementation --------------------------------------------

test("gateway signing bytes and signatures equal relaybox.protocol.handshake's", async () => {
  for (const v of vectors.cases) {
    const bytes = gatewaySigningBytes(v.server_id, v.session_id, v.device_id, v.client_nonce,
      v.server_nonce);
    assert.equal(b64urlEncode(bytes), v.gateway_bytes);
    assert.equal(await sign(await importSeed(v.seed), bytes), v.gateway_signature);
  }
});

test("token signing bytes and signatures equal relaybox.protocol.handshake's", async () => {
  for (const v of vectors.cases) {
    const bytes = tokenSigningBytes(v.server_id, v.device_id, v.timestamp, v.token_nonce);
    assert.equal(b64urlEncode(bytes), v.token_bytes);
    assert.equal(await sign(await importSeed(v.seed), bytes), v.token_signature);
  }
});

test("base64url is unpadded and strict, as in relaybox.protocol.encoding", () => {
  for (const [hexBytes, text] of vectors.b64url) {
    const bytes = Uint8Array.from(hexBytes.match(/../g) || [], (h) => parseInt(h, 16));
    assert.equal(b64urlEncode(bytes), text);
    assert.deepEqual(b64urlDecode(text, bytes.length), bytes);
  }
  for (const bad of vectors.b64url_invalid_32) {
    assert.throws(() => b64urlDecode(bad, 32), /base64url/);
  }
});

test("a generated device key is non-extractable and signs verifiably", async () => {
  const key = await generateDeviceKey();
  assert.equal(key.privateKey.extractable, false);
  await assert.rejects(crypto.subtle.exportKey("pkcs8", key.privateKey));
  const pub = await crypto.subtle.importKey("raw", b64urlDecode(key.publicKey, 32),
    { name: "Ed25519" }, false, ["verify"]);
  const msg = new TextEncoder().encode("hello");
  const sig = b64urlDecode(await sign(key.privateKey, msg), 64);
  assert.ok(await crypto.subtle.verify({ name: "Ed25519" }, pub, sig, msg));
});

// -- small helpers -------------------------------------------------------------------------

test("backoff doubles its ceiling up to the maximum, half fixed and half random", () => {
  assert.equal(backoffDelay(0, 0.25, 30, () => 0), 0.125);
  assert.equal(backoffDelay(0, 0.25, 30, () => 1), 0.25);
  assert.equal(backoffDelay(3, 0.25, 30, () => 0), 1);
  assert.equal(backoffDelay(3, 0.25, 30, () => 1), 2);
  assert.equal(backoffDelay(20, 0.25, 30, () => 0), 15);
  assert.equal(backoffDelay(20, 0.25, 30, () => 1), 30);
  assert.equal(backoffDelay(5000, 0.25, 30, () => 1), 30);
  for (let i = 0; i < 100; i += 1) {
    const d = backoffDelay(4, 0.25, 30);
    assert.ok(d >= 2 && d <= 4, String(d));
  }
});

test("uuid7 ids are canonical version 7 UUIDs that sort by time", () => {
  const a = uuid7(1_700_000_000_000);
  const b = uuid7(1_700_000_000_001);
  assert.match(a, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.ok(a < b);
});

test("server URLs and pairing codes are normalised like the Python client's", () => {
  assert.equal(normalizeServerUrl("wss://relay.example/x/api/v1/gateway"),
    "https://relay.example/x");
  assert.equal(normalizeServerUrl("http://127.0.0.1:8787/"), "http://127.0.0.1:8787");
  assert.equal(gatewayUrl("https://relay.example"), "wss://relay.example/api/v1/gateway");
  assert.equal(normalizePairingCode(" k7qd3mxa "), "K7QD-3MXA");
  assert.equal(normalizePairingCode("K7QD-3MXA"), "K7QD-3MXA");
  assert.throws(() => normalizePairingCode("K7QD-3MX"));
  assert.throws(() => normalizePairingCode("K7QD-3MXU")); // U is not Crockford base32
});

test("positions ack at most what this session received", () => {
  const p = new Positions({ clip: 5 });
  p.newSession({ clip: 9 });
  p.receive("clip", 7);
  p.done("clip", 7);
  assert.deepEqual(p.acksDue(), [["clip", 7]]);
  assert.deepEqual(p.acksDue(), []);
  p.newSession({ clip: 3 }); // a server restored from an older backup
  assert.equal(p.delivered.clip, 3);
});

// -- the client against a relay in memory --------------------------------------------------

async function device(relay, store = new MemoryStore()) {
  const key = await generateDeviceKey();
  const identity = {
    server: "http://relay.test", server_id: relay.serverId, device_id: crypto.randomUUID(),
    user_id: "u", name: "test", public_key: key.publicKey, private_key: key.privateKey,
  };
  relay.addDevice(identity.device_id, key.publicKey);
  await store.set("identity", identity);
  return { identity, store };
}

function client(relay, { identity, store }, extra = {}) {
  return new Client(identity, { store, WebSocket: relay.WebSocket, backoffInitial: 0.001,
    backoffMax: 0.002, ...extra });
}

test("handshake: hello, a signed auth, then connected", async () => {
  const relay = new FakeRelay();
  const dev = await device(relay);
  const c = client(relay, dev);
  const connected = once(c, "state", (s) => s === "connected");
  await c.start();
  await connected;
  const [hello] = relay.sent("hello");
  assert.equal(hello.protocol, 1);
  assert.equal(hello.device_id, dev.identity.device_id);
  assert.equal(b64urlDecode(hello.nonce, 32).length, 32);
  assert.equal(relay.sent("auth").length, 1);
  assert.equal(await loadIdentity(dev.store), dev.identity);
  await c.close();
  assert.equal(c.state, "stopped");
});

test("a server with another server_id is never signed for", async () => {
  const relay = new FakeRelay();
  const dev = await device(relay);
  dev.identity.server_id = "0192f1c2-7a4b-7c3d-8e9f-a0b1c2d3e4f5";
  const c = client(relay, dev);
  const fatal = once(c, "fatal");
  await c.start();
  assert.equal((await fatal).code, "server_mismatch");
  assert.equal(relay.sent("auth").length, 0);
  assert.equal(c.reconnectScheduled, false);
});

test("cursors are acked cumulatively and kept in the store across restarts", async () => {
  const relay = new FakeRelay();
  const dev = await device(relay);
  const c1 = client(relay, dev);
  const seen1 = [];
  c1.on("event", (e) => seen1.push(e.seq));
  const up = once(c1, "state", (s) => s === "connected");
  await c1.start();
  await up;
  const [ws] = relay.live;
  for (const seq of [1, 2, 3]) relay.event(ws, "clip", seq);
  c1.flushAcks();
  assert.deepEqual(seen1, [1, 2, 3]);
  assert.deepEqual(relay.sent("ack"), [{ type: "ack", stream: "clip", seq: 3 }]);
  await c1.close();
  assert.deepEqual((await dev.store.get("cursors")).streams, { clip: 3 });

  // A new client on the same store: the server sends 2..4 again (at least once).
  const c2 = client(relay, dev);
  const seen2 = [];
  c2.on("event", (e) => seen2.push(e.seq));
  const up2 = once(c2, "state", (s) => s === "connected");
  await c2.start();
  await up2;
  const ws2 = relay.live[0];
  for (const seq of [2, 3, 4]) relay.event(ws2, "clip", seq);
  c2.flushAcks();
  assert.deepEqual(seen2, [4]);
  assert.equal(c2.stats.duplicates, 2);
  assert.deepEqual(relay.cursors[dev.identity.device_id], { clip: 4 });
  await c2.close();
  assert.deepEqual((await dev.store.get("cursors")).streams, { clip: 4 });
});

test("acks go out once half a window of events arrived, without waiting", async () => {
  const relay = new FakeRelay();
  relay.window = 8;
  const dev = await device(relay);
  const c = client(relay, dev);
  const up = once(c, "state", (s) => s === "connected");
  await c.start();
  await up;
  const [ws] = relay.live;
  for (let seq = 1; seq <= 4; seq += 1) relay.event(ws, "clip", seq);
  assert.deepEqual(relay.sent("ack"), [{ type: "ack", stream: "clip", seq: 4 }]);
  relay.event(ws, "clip", 5);
  assert.equal(relay.sent("ack").length, 1); // the 100 ms timer sends the next
  await relay.waitSent("ack", 2);
  assert.deepEqual(relay.sent("ack")[1], { type: "ack", stream: "clip", seq: 5 });
  await c.close();
});

test("a gap is reported and acked up to next - 1", async () => {
  const relay = new FakeRelay();
  const dev = await device(relay);
  const c = client(relay, dev);
  const up = once(c, "state", (s) => s === "connected");
  await c.start();
  await up;
  const gap = once(c, "gap");
  relay.push(relay.live[0], { type: "gap", stream: "clip", after: 2, next: 10 });
  assert.deepEqual(await gap, { stream: "clip", after: 2, next: 10 });
  c.flushAcks();
  assert.deepEqual(relay.sent("ack"), [{ type: "ack", stream: "clip", seq: 9 }]);
  await c.close();
});

test("unacked publishes are sent again with the same id after a reconnect", async () => {
  const relay = new FakeRelay();
  const dev = await device(relay);
  const c = client(relay, dev);
  const up = once(c, "state", (s) => s === "connected");
  await c.start();
  await up;
  relay.holdAcks = true; // stored, but the ack never reaches the device
  const published = c.publish("clip", { text: "once" });
  await relay.waitSent("publish", 1);
  relay.holdAcks = false;
  const again = once(c, "state", (s) => s === "connected");
  relay.drop(relay.live[0], 1006);
  await again;
  const result = await published;
  const sends = relay.sent("publish");
  assert.equal(sends.length, 2);
  assert.equal(sends[0].id, sends[1].id);
  assert.equal(relay.stored.size, 1);
  assert.equal(result.seq, 1);
  assert.deepEqual(c.pending(), []);
  await c.close();
});

test("unacked publishes survive a restart of the client through the store", async () => {
  const relay = new FakeRelay();
  const dev = await device(relay);
  relay.holdAcks = true;
  const c1 = client(relay, dev);
  const up = once(c1, "state", (s) => s === "connected");
  await c1.start();
  await up;
  c1.publish("clip", "kept").catch(() => {});
  await relay.waitSent("publish", 1);
  await until(async () => ((await dev.store.get("outbox")) || []).length === 1);
  await c1.close();
  relay.holdAcks = false;

  const c2 = client(relay, dev);
  assert.equal(c2.pending().length, 0);
  const acked = once(c2, "ack");
  await c2.start();
  const ack = await acked;
  assert.equal(ack.body, "kept");
  assert.equal(relay.stored.size, 1);
  await until(async () => (await dev.store.get("outbox")).length === 0);
  await c2.close();
});

test("a conflict nack rejects with ConflictError and its head_seq", async () => {
  const relay = new FakeRelay();
  const dev = await device(relay);
  const c = client(relay, dev);
  const up = once(c, "state", (s) => s === "connected");
  await c.start();
  await up;
  relay.holdAcks = true;
  const p = c.publish("notes", "x", { key: "k", baseSeq: 1 });
  await relay.waitSent("publish", 1);
  const { id } = relay.sent("publish")[0];
  relay.push(relay.live[0], { type: "nack", id, code: "conflict", stream: "notes",
    head_seq: 4 });
  await assert.rejects(p, (exc) => exc instanceof ConflictError && exc.headSeq === 4);
  await c.close();
});

test("a rate_limited nack is retried with the same id after retry_after_ms", async () => {
  const relay = new FakeRelay();
  const dev = await device(relay);
  const c = client(relay, dev);
  const up = once(c, "state", (s) => s === "connected");
  await c.start();
  await up;
  relay.holdAcks = true;
  const p = c.publish("clip", 1);
  await relay.waitSent("publish", 1);
  const { id } = relay.sent("publish")[0];
  relay.holdAcks = false;
  relay.push(relay.live[0], { type: "nack", id, code: "rate_limited", retry_after_ms: 1 });
  const result = await p;
  assert.equal(relay.sent("publish").length, 2);
  assert.equal(relay.sent("publish")[1].id, id);
  assert.equal(result.id, id);
  await c.close();
});

test("revoked (4403) stops the client: no reconnect, publishes fail", async () => {
  const relay = new FakeRelay();
  const dev = await device(relay);
  const c = client(relay, dev);
  const up = once(c, "state", (s) => s === "connected");
  await c.start();
  await up;
  const fatal = once(c, "fatal");
  relay.push(relay.live[0], { type: "error", code: "revoked" });
  relay.drop(relay.live[0], 4403);
  assert.equal((await fatal).code, "revoked");
  assert.equal(c.state, "stopped");
  assert.equal(c.reconnectScheduled, false);
  assert.equal(relay.connections, 1);
  await assert.rejects(c.publish("clip", 1), (exc) => exc.code === "revoked");
});

test("a server restart (1001) is followed by a reconnect with backoff", async () => {
  const relay = new FakeRelay();
  const dev = await device(relay);
  const c = client(relay, dev);
  const up = once(c, "state", (s) => s === "connected");
  await c.start();
  await up;
  const states = [];
  c.on("state", (s) => states.push(s));
  const again = once(c, "state", (s) => s === "connected");
  relay.drop(relay.live[0], 1001);
  await again;
  assert.deepEqual(states, ["waiting", "connecting", "connected"]);
  assert.equal(c.sessions, 2);
  await c.close();
});

test("presence, synced and ping/pong reach the application", async () => {
  const relay = new FakeRelay();
  const dev = await device(relay);
  const c = client(relay, dev);
  const up = once(c, "state", (s) => s === "connected");
  await c.start();
  await up;
  const presence = once(c, "presence");
  const synced = once(c, "synced");
  relay.push(relay.live[0], { type: "presence", device_id: "d2", online: true });
  relay.push(relay.live[0], { type: "synced", streams: { clip: 0 } });
  assert.deepEqual(await presence, { deviceId: "d2", online: true });
  assert.deepEqual(await synced, { clip: 0 });
  assert.equal(typeof (await c.ping()), "number");
  await c.close();
});

test("forgetIdentity removes the key, the cursors and the outbox", async () => {
  const relay = new FakeRelay();
  const dev = await device(relay);
  await dev.store.set("cursors", { device_id: dev.identity.device_id, streams: { a: 1 } });
  await forgetIdentity(dev.store);
  assert.equal(await loadIdentity(dev.store), null);
  assert.equal(await dev.store.get("cursors"), undefined);
});
