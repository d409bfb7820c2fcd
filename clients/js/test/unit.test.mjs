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

/** A client on a fake server, connected (`welcome` came). */
async function connectedClient(options = {}) {
  const server = fakeServer();
  const client = new RoomcastClient("ws://fake/ws", { name: "me", WebSocket: server.WebSocket, backoff: { minMs: 1, maxMs: 2 }, ...options });
  const connected = client.connect();
  await tick(5);
  server.last().push({ type: "welcome", node: "n1", conn: "c1" });
  await connected;
  return { server, client };
}

/** A client on a fake server, connected, with room `r` joined (`joined` as given). */
async function joinedRoom(joined = {}, options = {}) {
  const { server, client } = await connectedClient(options);
  const joining = client.join("r");
  server.last().push({
    type: "joined", room: "r", you: { name: "me", color: "" }, members: [], member_count: 1, offset: "1-0", ...joined,
  });
  const room = await joining;
  return { server, client, room };
}

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
    const { server, client } = await connectedClient();
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
    const { server, client, room } = await joinedRoom({}, { idempotencyTtlMs: 30 });
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
    const { server, client, room } = await joinedRoom();
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

describe("room state and the joined event", () => {
  it("tells the first join and each rejoin, with the member page joined gave", async () => {
    const { server, client } = await connectedClient();
    const joining = client.join("r");
    assert.equal(client.room("r").state, "joining");
    const alice = { name: "alice", color: "#111111" };
    server.last().push({
      type: "joined", room: "r", you: alice, members: [alice], member_count: 5, members_next: "c-1", offset: "1-0",
    });
    // A join notice in the same task: the held `joined` still shows the list as joined gave it.
    server.last().push({ type: "presence", room: "r", event: "join", user: { name: "bob", color: "" }, member_count: 6 });
    const room = await joining;
    const events = [];
    room.on("joined", (e) => events.push(e));
    room.on("presence", (p) => events.push(p.event));
    assert.equal(room.state, "joined");
    assert.equal(room.membersNext, "c-1");
    await tick();
    assert.deepEqual(events, [
      { resumed: false, you: alice, members: [alice], memberCount: 5, membersNext: "c-1" },
      "join",
    ]);

    const states = [];
    client.on("state", (s, change) => states.push([s, room.state, change.retryInMs !== undefined]));
    server.last().drop(1006);
    assert.equal(room.state, "offline");
    while (server.sockets.length < 2 || server.last().readyState !== 1) await tick(1);
    server.last().push({ type: "welcome", node: "n2", conn: "c2" });
    // The rejoin goes out before `connected` is told.
    assert.deepEqual(states, [["reconnecting", "offline", true], ["connected", "joining", false]]);
    server.last().push({ type: "joined", room: "r", you: alice, members: [alice], member_count: 1, offset: "2-0", recovered: true });
    assert.deepEqual(events.at(-1), { resumed: true, you: alice, members: [alice], memberCount: 1, membersNext: null });
    assert.equal(room.membersNext, null);
    const leaving = room.leave();
    assert.equal(room.state, "left");
    server.last().push({ type: "left", room: "r" });
    await leaving;
    client.close();
  });
});

describe("member pages", () => {
  it("fetchMembersPage reads one page and leaves the room's list as it is", async () => {
    const { server, client, room } = await joinedRoom({ member_count: 4, members_next: "c-1" });
    const paging = room.fetchMembersPage(room.membersNext);
    const ask = server.lastSent("members");
    assert.equal(ask.after, "c-1");
    server.last().push({ type: "members", room: "r", members: [{ name: "x", color: "" }], member_count: 4, next: "c-2", ref: ask.ref });
    assert.deepEqual(await paging, { members: [{ name: "x", color: "" }], memberCount: 4, next: "c-2" });
    assert.deepEqual(room.members, []);
    assert.equal(room.membersNext, "c-1");

    const first = room.fetchMembersPage();
    assert.equal("after" in server.lastSent("members"), false, "from the start");
    server.last().push({ type: "error", code: "bad_request", message: "no", ref: server.lastSent("members").ref });
    await assert.rejects(first, (e) => e.code === "bad_request");
    client.close();
  });
});

describe("jwt notices and errors", () => {
  it("tells expiring and refreshed, and an auth the gateway did not take", async () => {
    let calls = 0;
    const { server, client } = await joinedRoom({}, { token: "t1", getToken: () => `t${(calls += 1) + 1}` });
    const seen = [];
    client.on("expiring", (e) => seen.push(["expiring", e]));
    client.on("refreshed", (e) => seen.push(["refreshed", e]));
    client.on("error", (e, source) => seen.push(["error", e.code, source]));
    server.last().push({ type: "expiring", in_ms: 3000 });
    await tick();
    assert.equal(server.lastSent("refresh").token, "t2");
    server.last().push({ type: "refreshed", exp: 1234, ref: server.lastSent("refresh").ref });
    server.last().push({ type: "error", code: "bad_request", message: "anonymous here", ref: "auth" });
    server.last().push({ type: "error", code: "internal", message: "?" });
    assert.deepEqual(seen, [
      ["expiring", { inMs: 3000 }],
      ["refreshed", { exp: 1234 }],
      ["error", "bad_request", "auth"],
      ["error", "internal", "server"],
    ]);
    assert.equal(client.state, "connected");
    client.close();
  });
});

describe("the WebSocket constructor", () => {
  it("is the global one as it is at each attempt, and frames that are not text are ignored", async () => {
    const first = fakeServer();
    const second = fakeServer();
    const saved = globalThis.WebSocket;
    globalThis.WebSocket = first.WebSocket;
    try {
      const client = new RoomcastClient("ws://fake/ws", { name: "me", backoff: { minMs: 1, maxMs: 2 } });
      const connected = client.connect();
      await tick(5);
      first.last().onmessage?.({ data: null });
      first.last().onmessage?.({ data: new Uint8Array([1]) });
      first.last().push({ type: "welcome", node: "n1", conn: "c1" });
      await connected;
      globalThis.WebSocket = second.WebSocket;
      first.last().drop(1006);
      while (first.sockets.length + second.sockets.length < 2) await tick(1);
      assert.equal(first.sockets.length, 1);
      assert.equal(second.sockets.length, 1, "the reconnect used the global constructor of now");
      client.close();
    } finally {
      globalThis.WebSocket = saved;
    }
  });
});

describe("heartbeat", () => {
  const hb = { heartbeat: { idleMs: 40, timeoutMs: 40 } };

  it("pings after a silence and gives up a connection that answers nothing", async () => {
    const { server, client } = await connectedClient(hb);
    const states = [];
    client.on("state", (st, change) => states.push([st, change.closeCode]));
    await tick(60);
    assert.equal(server.sent.filter((f) => f.type === "ping").length, 1, "one ping after 40 ms of silence");
    assert.equal(client.state, "connected");
    await tick(60);
    assert.deepEqual(states[0], ["reconnecting", 1006]);
    while (server.sockets.length < 2) await tick(1);
    assert.equal(server.sockets[0].readyState, 3, "the silent socket was closed");
    client.close();
  });

  it("keeps a connection whose pings are answered, and sends none while frames flow", async () => {
    const { server, client } = await connectedClient(hb);
    const answer = setInterval(() => {
      const pings = server.sent.filter((f) => f.type === "ping");
      const last = pings.at(-1);
      if (last !== undefined && !last.answered) {
        last.answered = true;
        server.last().push({ type: "pong", ref: last.ref });
      }
    }, 5);
    try {
      await tick(300);
      assert.ok(server.sent.filter((f) => f.type === "ping").length >= 3, "pings while idle");
      assert.equal(client.state, "connected");
      assert.equal(server.sockets.length, 1);
      clearInterval(answer);
      const before = server.sent.filter((f) => f.type === "ping").length;
      for (let i = 0; i < 10; i += 1) {
        server.last().push({ type: "typing", room: "r", user: { name: "x", color: "" } });
        await tick(20);
      }
      assert.equal(server.sent.filter((f) => f.type === "ping").length, before, "no ping while frames come");
    } finally {
      clearInterval(answer);
      client.close();
    }
  });

  it("gives up an attempt that gets no welcome, and is off with heartbeat: false", async () => {
    const server = fakeServer();
    const client = new RoomcastClient("ws://fake/ws", { WebSocket: server.WebSocket, backoff: { minMs: 1, maxMs: 2 }, ...hb });
    void client.connect().catch(() => {});
    await tick(150);
    assert.ok(server.sockets.length >= 2, "the attempt without welcome was dropped and retried");
    client.close();

    const { server: quiet, client: patient } = await connectedClient({ heartbeat: false });
    await tick(150);
    assert.equal(quiet.sent.filter((f) => f.type === "ping").length, 0);
    assert.equal(patient.state, "connected");
    patient.close();
  });

  it("reconnects at once when the browser says it is back online", async () => {
    const target = new EventTarget();
    globalThis.addEventListener = target.addEventListener.bind(target);
    globalThis.removeEventListener = target.removeEventListener.bind(target);
    const { server, client } = await connectedClient({ backoff: { minMs: 60_000, maxMs: 60_000 } });
    try {
      server.last().drop(1006);
      await tick(20);
      assert.equal(server.sockets.length, 1, "waiting for the backoff");
      target.dispatchEvent(new Event("online"));
      await tick(5);
      assert.equal(server.sockets.length, 2, "online cut the backoff short");
      client.close();
      target.dispatchEvent(new Event("online"));
      await tick(5);
      assert.equal(server.sockets.length, 2, "a closed client stays closed");
    } finally {
      client.close();
      delete globalThis.addEventListener;
      delete globalThis.removeEventListener;
    }
  });
});
