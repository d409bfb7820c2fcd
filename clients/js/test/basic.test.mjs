// Scenarios on a healthy deployment (Redis + 2 replicas + haproxy): messages across
// replicas, history on join, presence and typing, typed errors, and a resume that cannot
// recover everything surfacing as "gap" (history.size is 5 here, so a short absence loses
// messages).

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { RoomcastError } from "../dist/index.js";
import { clientPool, collect, nextEvent, sleep, startCluster, waitFor, wrappedWebSocket } from "./harness.mjs";

describe("a healthy deployment", () => {
  let cluster;
  const { client, closeAll } = clientPool();

  before(async () => {
    cluster = await startCluster({ name: "basic", env: { ROOMCAST_HISTORY__SIZE: "5" } });
  });
  after(async () => {
    closeAll();
    await cluster?.stop();
  });

  it("delivers a message sent on one replica to a member on the other", async () => {
    const alice = client(cluster.replicas[0].url, { name: "alice" });
    const bob = client(cluster.replicas[1].url, { name: "bob" });
    await Promise.all([alice.connect(), bob.connect()]);
    assert.equal(alice.state, "connected");
    assert.notEqual(alice.node, bob.node);
    const ra = await alice.join("across");
    const rb = await bob.join("across");
    const got = collect(rb);
    const mine = collect(ra);
    const { id, duplicate } = await ra.send("hello from alice");
    assert.match(id, /^\d+-\d+$/);
    assert.equal(duplicate, false);
    await got.waitCount(1);
    assert.equal(got.messages[0].text, "hello from alice");
    assert.equal(got.messages[0].id, id);
    assert.equal(got.messages[0].from.name, "alice");
    assert.equal(got.messages[0].replay, false);
    await mine.waitCount(1); // your own messages come back too
    assert.equal(mine.messages[0].id, id);
    assert.equal(rb.lastMessageId, id);
  });

  it("replays the room's last messages on a join with history, before live ones", async () => {
    const alice = client(cluster.replicas[0].url, { name: "alice2" });
    await alice.connect();
    const ra = await alice.join("history");
    const ids = [];
    for (let i = 0; i < 4; i += 1) ids.push((await ra.send(`h${i}`)).id);
    const carol = client(cluster.lbUrl, { name: "carol" });
    const joining = carol.join("history", { history: 3 });
    await carol.connect();
    const rc = await joining;
    const got = collect(rc);
    await got.waitCount(3);
    assert.deepEqual(got.texts(), ["h1", "h2", "h3"]);
    assert.ok(got.messages.every((m) => m.replay));
    await ra.send("live");
    await got.waitCount(4);
    assert.equal(got.messages[3].text, "live");
    assert.equal(got.messages[3].replay, false);
  });

  it("tells members who joins, leaves and types, and keeps room.members current", async () => {
    const dave = client(cluster.replicas[0].url, { name: "dave" });
    const erin = client(cluster.replicas[1].url, { name: "erin" });
    await Promise.all([dave.connect(), erin.connect()]);
    const rd = await dave.join("presence");
    assert.deepEqual(rd.members.map((m) => m.name), ["dave"]);
    assert.equal(rd.you?.name, "dave");
    const joined = nextEvent(rd, "presence");
    const re = await erin.join("presence");
    const p = await joined;
    assert.equal(p.event, "join");
    assert.equal(p.user.name, "erin");
    assert.equal(p.memberCount, 2);
    assert.deepEqual(rd.members.map((m) => m.name).sort(), ["dave", "erin"]);
    assert.equal(re.memberCount, 2);

    const typing = nextEvent(rd, "typing");
    re.typing();
    re.typing(); // throttled: at most one frame a second
    assert.equal((await typing).user.name, "erin");

    const left = nextEvent(rd, "presence");
    const leftEvent = nextEvent(re, "left");
    await re.leave();
    assert.deepEqual(await leftEvent, { reason: "left" });
    const l = await left;
    assert.equal(l.event, "leave");
    assert.equal(l.user.name, "erin");
    assert.deepEqual(rd.members.map((m) => m.name), ["dave"]);
    await assert.rejects(re.send("too late"), (e) => e instanceof RoomcastError && e.code === "not_joined");
  });

  it("rejects with typed errors carrying the protocol's code", async () => {
    const frank = client(cluster.lbUrl, { name: "frank" });
    await frank.connect();
    await assert.rejects(frank.join("bad room!"), (e) => e instanceof RoomcastError && e.code === "invalid_room");
    const rf = await frank.join("errors");
    await assert.rejects(rf.send("x".repeat(5000)), (e) => e instanceof RoomcastError && e.code === "too_large");
    await assert.rejects(frank.join("errors"), (e) => e.code === "already_joined");
    const nameless = client(cluster.lbUrl, {});
    await nameless.connect();
    await assert.rejects(nameless.join("errors"), (e) => e.code === "bad_request");
    assert.equal((await rf.send("still fine")).duplicate, false);
  });

  it("surfaces a resume that could not recover every message as a gap", async () => {
    const hooks = { blocked: false };
    const Ws = wrappedWebSocket(hooks);
    const gina = client(cluster.lbUrl, { name: "gina", WebSocket: Ws, backoff: { minMs: 100, maxMs: 300 } });
    const hank = client(cluster.replicas[1].url, { name: "hank" });
    await Promise.all([gina.connect(), hank.connect()]);
    const rg = await gina.join("gap");
    const rh = await hank.join("gap");
    const got = collect(rg);
    await rh.send("g0");
    await rh.send("g1");
    await got.waitCount(2);
    const cursor = rg.lastMessageId;

    // Gina drops off and cannot come back while 8 messages go by (history keeps 5).
    hooks.blocked = true;
    Ws.sockets.at(-1).close(4000, "test");
    await waitFor(() => gina.state === "reconnecting", { what: "gina reconnecting" });
    const sent = [];
    for (let i = 2; i < 10; i += 1) sent.push((await rh.send(`g${i}`)).id);
    const gap = nextEvent(rg, "gap", 15_000);
    hooks.blocked = false;
    const g = await gap;
    assert.equal(g.since, cursor);
    assert.equal(g.offset, sent.at(-1));
    // What is left follows: the last 5, in order, once each.
    await got.waitCount(7);
    await sleep(200);
    assert.deepEqual(got.texts(), ["g0", "g1", "g5", "g6", "g7", "g8", "g9"]);
  });
});
