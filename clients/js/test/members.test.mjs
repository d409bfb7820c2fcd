// Large rooms through the client (Redis + 2 replicas + haproxy), with small limits so a
// handful of clients make a "large" room: `joined` lists the first 3 members
// (presence.members_in_join), rooms above 4 members (presence.notify_max_members) get
// summaries instead of a notice per join and leave. The client keeps `memberCount`
// current from summaries, marks `members` stale, and `fetchMembers()` reads the whole list
// page by page (`members` requests) on whichever replica the client is on.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { clientPool, startCluster, waitFor } from "./harness.mjs";

describe("a large room", () => {
  let cluster;
  const { client, closeAll } = clientPool();
  /** `n` members named `${prefix}-i`, alternating between the two replicas. */
  const crowd = async (room, prefix, n) => {
    const rooms = [];
    for (let i = 0; i < n; i += 1) {
      const c = client(cluster.replicas[i % 2].url, { name: `${prefix}-${i}` });
      await c.connect();
      rooms.push(await c.join(room));
    }
    return rooms;
  };

  before(async () => {
    cluster = await startCluster({
      name: "members",
      env: {
        ROOMCAST_PRESENCE__MEMBERS_IN_JOIN: "3",
        ROOMCAST_PRESENCE__NOTIFY_MAX_MEMBERS: "4",
        ROOMCAST_PRESENCE__SUMMARY_INTERVAL: "200ms",
      },
    });
  });
  after(async () => {
    closeAll();
    await cluster?.stop();
  });

  it("lists the first page on join and every member, once, through fetchMembers", async () => {
    await crowd("paged", "p", 7);
    const zoe = client(cluster.lbUrl, { name: "zoe" });
    await zoe.connect();
    const room = await zoe.join("paged");
    assert.equal(room.members.length, 3, "joined lists presence.members_in_join members");
    assert.equal(room.memberCount, 8);
    const all = await room.fetchMembers();
    const names = all.map((m) => m.name).sort();
    assert.deepEqual(names, ["p-0", "p-1", "p-2", "p-3", "p-4", "p-5", "p-6", "zoe"]);
    assert.deepEqual(room.members.map((m) => m.name).sort(), names, "fetchMembers keeps the list in room.members");
    assert.equal(room.memberCount, 8);
    assert.equal(room.membersStale, false);
  });

  it("counts joins and leaves from summaries, marks the list stale, and reads it again", async () => {
    const members = await crowd("summed", "s", 5);
    const yan = client(cluster.replicas[0].url, { name: "yan" });
    await yan.connect();
    const room = await yan.join("summed");
    assert.equal(room.memberCount, 6);
    const summaries = [];
    const notices = [];
    room.on("presence", (p) => (p.event === "summary" ? summaries : notices).push(p));

    const late = await crowd("summed", "t", 2); // one on each replica
    await members[0].leave();
    await waitFor(() => room.memberCount === 7, { timeout: 15_000, what: `member count 7 (is ${room.memberCount})` });
    assert.deepEqual(notices, [], "a room above notify_max_members gets no per-member notices");
    assert.ok(summaries.length >= 1);
    // A room's summary is shared by its members: the first one may also count joins that
    // came just before yan's (already in its count), so these are lower bounds.
    assert.ok(summaries.reduce((n, s) => n + s.joins, 0) >= 2);
    assert.ok(summaries.reduce((n, s) => n + s.leaves, 0) >= 1);
    assert.equal(summaries.at(-1).memberCount, 7);
    assert.equal(room.membersStale, true, "summaries do not say who: room.members is stale");

    const all = await room.fetchMembers();
    assert.deepEqual(all.map((m) => m.name).sort(), ["s-1", "s-2", "s-3", "s-4", "t-0", "t-1", "yan"]);
    assert.equal(room.membersStale, false);
    assert.equal(late.length, 2);
  });
});
