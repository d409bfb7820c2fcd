// Failover scenarios (Redis + 2 replicas + haproxy): the replica a client is on drains
// (SIGTERM, close 1001), crashes (SIGKILL) or freezes (SIGSTOP: the connection stays open
// and silent, so the client's heartbeat must notice) while another client sends steadily; the
// client reconnects through haproxy, resumes with `since`, and the application sees every
// message exactly once, in order. A send in flight when its replica crashes is acked once
// after the reconnect, through its idempotency key.

import assert from "node:assert/strict";
import { after, afterEach, before, describe, it } from "node:test";
import { clientPool, collect, sleep, startCluster, waitFor, wrappedWebSocket } from "./harness.mjs";

describe("failover", () => {
  let cluster;
  const { client, closeAll } = clientPool({ backoff: { minMs: 200, maxMs: 2000 } });

  before(async () => {
    cluster = await startCluster({ name: "failover" });
  });
  afterEach(async () => {
    closeAll();
    // Bring back any replica a test stopped.
    for (let i = 0; i < cluster.replicas.length; i += 1) {
      const p = cluster.replicas[i].proc;
      if (p.child.exitCode !== null || p.child.signalCode !== null) await cluster.restart(i);
    }
  });
  after(async () => {
    await cluster?.stop();
  });

  /**
   * A receiver through haproxy, a sender directly on the other replica sending 40
   * messages one after another; `disrupt(i)` hits the receiver's replica (index i) 0.7 s in.
   */
  async function steadyTraffic(room, disrupt, receiverOptions = {}) {
    const receiver = client(cluster.lbUrl, { name: "receiver", ...receiverOptions });
    await receiver.connect();
    const victim = cluster.replicaOf(receiver.node);
    assert.ok(victim >= 0, `receiver on an unknown node ${receiver.node}`);
    const other = cluster.replicas[1 - victim];
    const sender = client(other.url, { name: "sender" });
    await sender.connect();
    const rr = await receiver.join(room);
    const rs = await sender.join(room);
    const got = collect(rr);
    const states = [];
    receiver.on("state", (s, change) => states.push([s, change.closeCode]));

    const count = 40;
    const acked = [];
    const sending = (async () => {
      for (let i = 0; i < count; i += 1) {
        acked.push((await rs.send(`m${i}`)).id);
        await sleep(60);
      }
    })();
    await sleep(700);
    await disrupt(victim);
    await sending;
    await got.waitCount(count, 30_000);
    await sleep(300); // nothing more may come
    assert.deepEqual(got.texts(), Array.from({ length: count }, (_, i) => `m${i}`));
    assert.deepEqual(got.messages.map((m) => m.id), acked);
    assert.equal(receiver.state, "connected");
    assert.equal(receiver.node, other.node, "the receiver moved to the surviving replica");
    return states;
  }

  it("drain (SIGTERM): reconnects through haproxy and delivers every message once, in order", async () => {
    const states = await steadyTraffic("drain", (i) => cluster.kill(i, "SIGTERM"));
    assert.ok(
      states.some(([s, code]) => s === "reconnecting" && code === 1001),
      `expected a reconnect after close 1001, got ${JSON.stringify(states)}`,
    );
  });

  it("crash (SIGKILL): reconnects and delivers every acknowledged message once, in order", async () => {
    const states = await steadyTraffic("crash", (i) => cluster.kill(i, "SIGKILL"));
    assert.ok(states.some(([s]) => s === "reconnecting"), JSON.stringify(states));
  });

  it("freeze (SIGSTOP): the heartbeat notices the silent connection; every message once, in order", async () => {
    // A frozen replica keeps its TCP connections open and says nothing: only the client's
    // heartbeat (ping, no answer) can tell. haproxy's health check takes it out of rotation.
    let frozen = null;
    try {
      const freeze = (i) => {
        frozen = cluster.replicas[i].proc.child;
        frozen.kill("SIGSTOP");
      };
      const states = await steadyTraffic("freeze", freeze, { heartbeat: { idleMs: 1000, timeoutMs: 1000 } });
      assert.ok(
        states.some(([s, code]) => s === "reconnecting" && code === 1006),
        `expected a reconnect after the heartbeat gave up (1006), got ${JSON.stringify(states)}`,
      );
    } finally {
      frozen?.kill("SIGCONT");
    }
  });

  it("a send in flight when its replica crashes is acked exactly once after the reconnect", async () => {
    // The sender's first ack is lost with its replica: the ack frame is dropped before
    // the library sees it, and the replica is killed right then.
    let dropped = null;
    let victim = -1;
    const hooks = {
      onReceive: (f) => {
        if (f.type === "ack" && dropped === null && victim >= 0) {
          dropped = f;
          cluster.replicas[victim].proc.child.kill("SIGKILL");
          return false;
        }
        return true;
      },
    };
    const sender = client(cluster.lbUrl, { name: "flaky", WebSocket: wrappedWebSocket(hooks) });
    await sender.connect();
    victim = cluster.replicaOf(sender.node);
    const watcher = client(cluster.replicas[1 - victim].url, { name: "watcher" });
    await watcher.connect();
    const rw = await watcher.join("inflight");
    const rs = await sender.join("inflight");
    const got = collect(rw);
    const mine = collect(rs);
    const result = await rs.send("exactly once");
    assert.ok(dropped !== null, "the first ack was dropped");
    assert.equal(result.id, dropped.id, "the retry is acked with the first send's id");
    assert.equal(result.duplicate, true, "the retry published nothing new");
    assert.equal(sender.node, cluster.replicas[1 - victim].node);
    const after = await rs.send("next");
    await got.waitCount(2);
    await mine.waitCount(2);
    await sleep(300);
    assert.deepEqual(got.texts(), ["exactly once", "next"]);
    assert.deepEqual(got.messages.map((m) => m.id), [result.id, after.id]);
    assert.deepEqual(mine.texts(), ["exactly once", "next"], "the sender sees its own message once too");
  });

  it("a send racing a crash is published at most once and never dropped", async () => {
    // The replica dies right after the send frame leaves: the send may or may not have
    // been published; either way it ends acked once.
    let victim = -1;
    let killed = false;
    const hooks = {
      onSend: (f) => {
        if (f.type === "send" && !killed && victim >= 0) {
          killed = true;
          cluster.replicas[victim].proc.child.kill("SIGKILL");
        }
      },
    };
    const sender = client(cluster.lbUrl, { name: "racer", WebSocket: wrappedWebSocket(hooks) });
    await sender.connect();
    victim = cluster.replicaOf(sender.node);
    const watcher = client(cluster.replicas[1 - victim].url, { name: "watcher2" });
    await watcher.connect();
    const rw = await watcher.join("race");
    const rs = await sender.join("race");
    const got = collect(rw);
    const { id } = await rs.send("racing");
    await got.waitCount(1);
    await waitFor(() => sender.state === "connected");
    await sleep(500);
    assert.deepEqual(got.texts(), ["racing"]);
    assert.equal(got.messages[0].id, id);
  });
});
