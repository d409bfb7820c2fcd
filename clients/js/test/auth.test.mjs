// jwt mode (Redis + 2 replicas + haproxy, auth.mode = jwt): the token goes as the `auth`
// frame, `getToken` renews it on `expiring` before `exp` without dropping the connection,
// and a user disconnected by the server API (close 4003) is not reconnected.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { RoomcastError } from "../dist/index.js";
import { clientPool, mintToken, sleep, startCluster, untilState, wrappedWebSocket } from "./harness.mjs";

const SECRET = "test-secret-0123456789abcdef";
const API_KEY = "test-api-key-0123456789";

describe("jwt mode", () => {
  let cluster;
  const { client, closeAll } = clientPool({ backoff: { minMs: 100, maxMs: 500 } });
  const token = (sub, ttlS) =>
    mintToken(SECRET, { sub, name: sub, exp: Math.floor(Date.now() / 1000) + ttlS });

  before(async () => {
    cluster = await startCluster({
      name: "jwt",
      env: {
        ROOMCAST_AUTH__MODE: "jwt",
        ROOMCAST_AUTH__JWT__SECRET: SECRET,
        ROOMCAST_AUTH__JWT__LEEWAY: "0s",
        ROOMCAST_AUTH__REFRESH_NOTICE: "2s",
        ROOMCAST_API__KEYS: API_KEY,
      },
    });
  });
  after(async () => {
    closeAll();
    await cluster?.stop();
  });

  it("renews the token through getToken before exp, on the same connection", async () => {
    let calls = 0;
    const Ws = wrappedWebSocket({});
    const ivy = client(cluster.lbUrl, {
      WebSocket: Ws,
      getToken: () => {
        calls += 1;
        return token("ivy", 4);
      },
    });
    const states = [];
    ivy.on("state", (s) => states.push(s));
    await ivy.connect();
    const room = await ivy.join("renew");
    assert.equal(room.you?.id, "ivy");
    // Past the first token's exp (4 s): it was renewed at `expiring` (2 s before), twice.
    await sleep(6500);
    assert.ok(calls >= 3, `getToken called ${calls} times`);
    assert.equal(Ws.sockets.length, 1, "never reconnected");
    assert.deepEqual(states, ["connecting", "connected"]);
    assert.match((await room.send("still here")).id, /^\d+-\d+$/);
  });

  it("stops reconnecting after close 4003 (disconnected by the server API)", async () => {
    const Ws = wrappedWebSocket({});
    const jack = client(cluster.lbUrl, { WebSocket: Ws, getToken: () => token("jack", 300) });
    await jack.connect();
    const room = await jack.join("banned");
    const closed = untilState(jack, "closed", 10_000);
    const res = await fetch(`${cluster.replicas[0].httpUrl}/api/v1/users/jack/disconnect`, {
      method: "POST",
      headers: { Authorization: `Bearer ${API_KEY}`, "Content-Type": "application/json" },
      body: JSON.stringify({ reason: "banned" }),
    });
    assert.equal(res.status, 200);
    const change = await closed;
    assert.ok(change.error instanceof RoomcastError);
    assert.equal(change.error.code, "forbidden");
    assert.equal(change.closeCode, 4003);
    assert.match(change.error.message, /banned/);
    await sleep(1500);
    assert.equal(jack.state, "closed");
    assert.equal(Ws.sockets.length, 1, "no reconnect");
    await assert.rejects(jack.connect(), (e) => e.code === "forbidden");
    await assert.rejects(room.send("hello?"), (e) => e.code === "forbidden");
  });

  it("stops after close 4002 when there is no getToken", async () => {
    const kim = client(cluster.lbUrl, { token: token("kim", 3) });
    await kim.connect();
    const change = await untilState(kim, "closed", 10_000);
    assert.equal(change.closeCode, 4002);
    assert.equal(change.error.code, "unauthorized");
  });

  it("gets a new token after the server refused one", async () => {
    let calls = 0;
    const leo = client(cluster.lbUrl, {
      getToken: () => {
        calls += 1;
        return calls === 1 ? mintToken("wrong-secret-0123456789", { sub: "leo", name: "leo", exp: 4102444800 }) : token("leo", 300);
      },
    });
    await leo.connect();
    assert.equal(calls, 2);
    const room = await leo.join("second-try");
    assert.equal(room.you?.id, "leo");
  });
});
