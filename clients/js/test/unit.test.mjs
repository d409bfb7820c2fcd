// Unit tests of the parts that need no gateway: id ordering, backoff delays, and the
// delivery rule of a room (each message once, in order, across a resume) driven by a fake
// WebSocket that plays the server's part.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { RoomcastClient, backoffDelay, compareIds } from "../dist/index.js";

/** A fake WebSocket: the test plays the server through `server`. */
function fakeServer() {
  const server = { sockets: [], sent: [] };
  class Fake {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.onopen = this.onmessage = this.onclose = this.onerror = null;
      server.sockets.push(this);
      setTimeout(() => {
        this.readyState = 1;
        this.onopen?.({});
      }, 0);
    }
    send(data) {
      server.sent.push(JSON.parse(data));
    }
    close(code = 1000) {
      this.drop(code);
    }
    /** The server sends a frame. */
    push(frame) {
      this.onmessage?.({ data: JSON.stringify(frame) });
    }
    /** The connection ends with `code`. */
    drop(code) {
      if (this.readyState === 3) return;
      this.readyState = 3;
      this.onclose?.({ code, reason: "" });
    }
  }
  server.WebSocket = Fake;
  server.last = () => server.sockets.at(-1);
  server.lastSent = (type) => server.sent.filter((f) => f.type === type).at(-1);
  return server;
}

const tick = (ms = 0) => new Promise((r) => setTimeout(r, ms));
const msg = (id, text, replay = false) => ({
  type: "message", room: "r", id, from: { name: "x", color: "#000000" }, text, ts: 1, replay,
});

describe("message ids", () => {
  it("compare by ms, then seq, as numbers", () => {
    assert.ok(compareIds("1-0", "2-0") < 0);
    assert.ok(compareIds("10-0", "9-5") > 0);
    assert.ok(compareIds("5-10", "5-9") > 0);
    assert.equal(compareIds("1732258000000-3", "1732258000000-3"), 0);
  });
});

describe("backoff", () => {
  it("doubles from minMs to maxMs, each delay within ±50%", () => {
    assert.equal(backoffDelay(0, 500, 10_000, () => 0.5), 500);
    assert.equal(backoffDelay(3, 500, 10_000, () => 0.5), 4000);
    assert.equal(backoffDelay(10, 500, 10_000, () => 0.5), 10_000);
    assert.equal(backoffDelay(0, 500, 10_000, () => 0), 250);
    assert.equal(backoffDelay(0, 500, 10_000, () => 0.999999) < 750, true);
  });
});

describe("a room across a resume (fake server)", () => {
  it("delivers each message once, in order, rejoins with since and resends unacked sends", async () => {
    const server = fakeServer();
    const client = new RoomcastClient("ws://fake/ws", { name: "me", WebSocket: server.WebSocket, backoff: { minMs: 1, maxMs: 2 } });
    const connected = client.connect();
    await tick(5);
    server.last().push({ type: "welcome", node: "n1", conn: "c1" });
    await connected;
    const joining = client.join("r");
    const join = server.lastSent("join");
    assert.deepEqual({ ...join, ref: undefined }, { type: "join", room: "r", name: "me", ref: undefined });
    server.last().push({ type: "joined", room: "r", you: { name: "me", color: "#000000" }, members: [], member_count: 1, offset: "5-0" });
    const room = await joining;
    const got = [];
    room.on("message", (m) => got.push(m.id));
    server.last().push(msg("4-0", "old, before offset"));
    server.last().push(msg("6-0", "a"));
    server.last().push(msg("7-0", "b"));
    const sending = room.send("mine");
    const send = server.lastSent("send");
    assert.equal(typeof send.idem, "string");
    await tick();
    assert.deepEqual(got, ["6-0", "7-0"]);

    // The connection drops before the ack; the client reconnects and resumes.
    server.last().drop(1006);
    assert.equal(client.state, "reconnecting");
    await tick(20);
    server.last().push({ type: "welcome", node: "n2", conn: "c2" });
    const rejoin = server.lastSent("join");
    assert.equal(rejoin.since, "7-0");
    server.last().push({ type: "joined", room: "r", you: { name: "me", color: "#000000" }, members: [], member_count: 1, offset: "9-0", recovered: true });
    const resend = server.lastSent("send");
    assert.equal(resend.idem, send.idem, "the same idempotency key");
    assert.notEqual(resend.ref, send.ref);
    server.last().push(msg("7-0", "b", true)); // a repeat is dropped
    server.last().push(msg("8-0", "mine", true));
    server.last().push(msg("9-0", "c", true));
    server.last().push({ type: "ack", ref: resend.ref, id: "8-0", duplicate: true });
    assert.deepEqual(await sending, { id: "8-0", duplicate: true });
    assert.deepEqual(got, ["6-0", "7-0", "8-0", "9-0"]);
    client.close();
    assert.equal(client.state, "closed");
  });

  it("gives up on a send unacked past the idempotency window instead of risking a double publish", async () => {
    const server = fakeServer();
    const client = new RoomcastClient("ws://fake/ws", {
      name: "me", WebSocket: server.WebSocket, backoff: { minMs: 1, maxMs: 2 }, idempotencyTtlMs: 30,
    });
    const connected = client.connect();
    await tick(5);
    server.last().push({ type: "welcome", node: "n1", conn: "c1" });
    await connected;
    const joining = client.join("r");
    server.last().push({ type: "joined", room: "r", you: { name: "me", color: "" }, members: [], member_count: 1, offset: "1-0" });
    const room = await joining;
    const sending = room.send("late");
    server.last().drop(1006);
    await tick(60);
    server.last().push({ type: "welcome", node: "n2", conn: "c2" });
    server.last().push({ type: "joined", room: "r", you: { name: "me", color: "" }, members: [], member_count: 1, offset: "1-0", recovered: true });
    await assert.rejects(sending, (e) => e.code === "unavailable");
    assert.equal(server.sent.filter((f) => f.type === "send").length, 1, "not sent again");
    client.close();
  });

  it("emits gap on recovered:false and stops on 4003", async () => {
    const server = fakeServer();
    const client = new RoomcastClient("ws://fake/ws", { name: "me", WebSocket: server.WebSocket, backoff: { minMs: 1, maxMs: 2 } });
    const connected = client.connect();
    await tick(5);
    server.last().push({ type: "welcome", node: "n1", conn: "c1" });
    await connected;
    const joining = client.join("r");
    server.last().push({ type: "joined", room: "r", you: { name: "me", color: "" }, members: [], member_count: 1, offset: "1-0" });
    const room = await joining;
    const gaps = [];
    room.on("gap", (g) => gaps.push(g));
    server.last().drop(1001);
    await tick(20);
    server.last().push({ type: "welcome", node: "n2", conn: "c2" });
    server.last().push({ type: "joined", room: "r", you: { name: "me", color: "" }, members: [], member_count: 1, offset: "50-0", recovered: false });
    assert.deepEqual(gaps, [{ since: "1-0", offset: "50-0" }]);
    const states = [];
    client.on("state", (s, c) => states.push([s, c.closeCode, c.error?.code]));
    server.last().push({ type: "error", code: "forbidden", message: "banned" });
    server.last().drop(4003);
    await tick(20);
    assert.deepEqual(states, [["closed", 4003, "forbidden"]]);
    assert.equal(server.sockets.length, 2, "no reconnect after 4003");
  });
});
