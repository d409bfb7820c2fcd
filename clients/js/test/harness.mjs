// Test harness: a real roomcast deployment as local processes on free loopback ports:
// one redis-server, N gateway replicas (the release binary, configured by ROOMCAST_*
// environment variables as docs/configuration.md describes) and haproxy in front of them
// with health checks on each replica's /readyz, configured as deploy/local/up.sh does it
// (deploy/local/haproxy.cfg.in).
//
// Every process is tracked by pid and stopped by `cluster.stop()` (and, as a last resort,
// when the test process exits). Logs go to a temporary directory, named when a start
// fails, removed by `stop()` unless ROOMCAST_TEST_KEEP_LOGS=1.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, connect as netConnect } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { RoomcastClient } from "../dist/index.js";

const HERE = dirname(fileURLToPath(import.meta.url));
/** The gateway binary: $ROOMCAST_BIN, else the repository's release build. */
export const ROOMCAST_BIN = process.env.ROOMCAST_BIN ?? resolve(HERE, "../../../target/release/roomcast");
/** haproxy's configuration, shared with deploy/local/up.sh. */
const HAPROXY_TEMPLATE = resolve(HERE, "../../../deploy/local/haproxy.cfg.in");

/** Every child still running, so an exiting test process can kill them. */
const children = new Set();
process.on("exit", () => {
  for (const child of children) {
    try {
      child.kill("SIGKILL");
    } catch {
      // gone
    }
  }
});

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Waits until `check()` returns something truthy (polled every `every` ms), or throws. */
export async function waitFor(check, { timeout = 10_000, every = 50, what = "condition" } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await sleep(every);
  }
}

/** `n` distinct free TCP ports on 127.0.0.1 (held open together while choosing). */
export async function freePorts(n) {
  const servers = [];
  try {
    for (let i = 0; i < n; i += 1) {
      const s = createServer();
      await new Promise((res, rej) => {
        s.once("error", rej);
        s.listen(0, "127.0.0.1", res);
      });
      servers.push(s);
    }
    return servers.map((s) => s.address().port);
  } finally {
    await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  }
}

async function httpOk(url) {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
    await res.arrayBuffer();
    return res.ok;
  } catch {
    return false;
  }
}

function redisPing(port) {
  return new Promise((res) => {
    const sock = netConnect(port, "127.0.0.1");
    let buf = "";
    const done = (ok) => {
      sock.destroy();
      res(ok);
    };
    sock.setTimeout(1000, () => done(false));
    sock.on("error", () => done(false));
    sock.on("connect", () => sock.write("PING\r\n"));
    sock.on("data", (d) => {
      buf += d.toString();
      if (buf.includes("\r\n")) done(buf.startsWith("+PONG"));
    });
  });
}

/** A child process with its output in `logFile`; resolves `exited` when it ends. */
function startProcess(cmd, args, { env, logFile }) {
  const fd = openSync(logFile, "a");
  const child = spawn(cmd, args, { env, stdio: ["ignore", fd, fd] });
  children.add(child);
  const exited = new Promise((res) => {
    child.once("exit", (code, signal) => {
      children.delete(child);
      res({ code, signal });
    });
  });
  return { child, exited, logFile };
}

/** Stops a process: `signal`, then SIGKILL after `graceMs`. */
async function stopProcess(p, signal = "SIGTERM", graceMs = 10_000) {
  if (p === null || p.child.exitCode !== null || p.child.signalCode !== null) return;
  p.child.kill(signal);
  const timer = setTimeout(() => p.child.kill("SIGKILL"), graceMs);
  await p.exited;
  clearTimeout(timer);
}

/** The environment of a gateway: ours without any ROOMCAST_* (the gateway reads them all). */
function gatewayEnv(extra) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith("ROOMCAST_") && v !== undefined) env[k] = v;
  }
  return { ...env, ...extra };
}

/**
 * Starts Redis, `replicas` gateways and haproxy. `env`: extra ROOMCAST_* settings for
 * every gateway (e.g. jwt mode). Returns the cluster handle:
 *   lbUrl                       ws://127.0.0.1:PORT/ws through haproxy
 *   replicas[i].url / .httpUrl  one replica directly; .node its node id
 *   kill(i, signal)             signals replica i and waits for it to exit
 *   restart(i)                  starts replica i again on its ports, waits until ready
 *   replicaOf(nodeId)           the index of the replica with that node id
 *   stop()                      stops everything
 */
export async function startCluster({ replicas = 2, env = {}, name = "rc" } = {}) {
  if (!existsSync(ROOMCAST_BIN)) {
    throw new Error(`no gateway binary at ${ROOMCAST_BIN} (cargo build --release, or set ROOMCAST_BIN)`);
  }
  const dir = mkdtempSync(join(tmpdir(), `roomcast-js-${name}-`));
  const ports = await freePorts(2 + 2 * replicas);
  const [redisPort, lbPort] = ports;
  const cluster = {
    dir,
    redis: null,
    haproxy: null,
    replicas: [],
    lbUrl: `ws://127.0.0.1:${lbPort}/ws`,
    lbHttp: `http://127.0.0.1:${lbPort}`,
  };
  try {
    cluster.redis = startProcess(
      "redis-server",
      ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
      { env: process.env, logFile: join(dir, "redis.log") },
    );
    await waitFor(() => redisPing(redisPort), { timeout: 20_000, what: `redis (log ${dir}/redis.log)` });

    for (let i = 0; i < replicas; i += 1) {
      const port = ports[2 + 2 * i];
      const admin = ports[3 + 2 * i];
      const node = `${name}-${i + 1}`;
      const replicaEnv = gatewayEnv({
        ROOMCAST_SERVER__LISTEN: `127.0.0.1:${port}`,
        ROOMCAST_ADMIN__LISTEN: `127.0.0.1:${admin}`,
        ROOMCAST_NODE__ID: node,
        ROOMCAST_REDIS__URL: `redis://127.0.0.1:${redisPort}`,
        ROOMCAST_LOG__LEVEL: "warn",
        ROOMCAST_DRAIN__SPREAD: "1s",
        ROOMCAST_DRAIN__TIMEOUT: "5s",
        // Every test connection comes from 127.0.0.1 (through haproxy too).
        ROOMCAST_LIMITS__CONNECTIONS_PER_IP: "100000",
        ROOMCAST_LIMITS__CONNECTS_PER_SECOND_PER_IP: "100000",
        ...env,
      });
      const replica = {
        index: i,
        node,
        port,
        admin,
        url: `ws://127.0.0.1:${port}/ws`,
        httpUrl: `http://127.0.0.1:${port}`,
        proc: null,
        env: replicaEnv,
      };
      cluster.replicas.push(replica);
      await startReplica(cluster, replica);
    }

    const servers = cluster.replicas
      .map((r) => `    server ${r.node} 127.0.0.1:${r.port} check port ${r.admin}`)
      .join("\n");
    const cfg = readFileSync(HAPROXY_TEMPLATE, "utf8")
      .replaceAll("@MAXCONN@", "4096")
      .replaceAll("@LB_PORT@", String(lbPort))
      .replaceAll("@CHECK_INTERVAL@", "500ms")
      .replace("@SERVERS@", servers);
    writeFileSync(join(dir, "haproxy.cfg"), cfg);
    cluster.haproxy = startProcess("haproxy", ["-db", "-f", join(dir, "haproxy.cfg")], {
      env: process.env,
      logFile: join(dir, "haproxy.log"),
    });
    // Ready once every replica is in rotation (health checks passed).
    await waitFor(() => httpOk(`${cluster.lbHttp}/readyz`), {
      timeout: 20_000,
      what: `haproxy (log ${dir}/haproxy.log)`,
    });
    await sleep(1200); // rise 2 x inter 500ms: every server is up, not just the first
  } catch (err) {
    await stopCluster(cluster, true);
    throw err;
  }

  cluster.kill = async (i, signal = "SIGTERM") => {
    const r = cluster.replicas[i];
    await stopProcess(r.proc, signal, 30_000);
  };
  cluster.restart = async (i) => {
    const r = cluster.replicas[i];
    await stopProcess(r.proc, "SIGKILL");
    await startReplica(cluster, r);
    await sleep(1200); // haproxy: rise 2 x inter 500ms
  };
  cluster.replicaOf = (node) => cluster.replicas.findIndex((r) => r.node === node);
  cluster.stop = () => stopCluster(cluster);
  cluster.log = (file) => readFileSync(join(dir, file), "utf8");
  return cluster;
}

async function startReplica(cluster, r) {
  r.proc = startProcess(ROOMCAST_BIN, ["serve"], { env: r.env, logFile: join(cluster.dir, `${r.node}.log`) });
  const ready = await waitFor(
    async () => (r.proc.child.exitCode !== null ? "exited" : (await httpOk(`http://127.0.0.1:${r.admin}/readyz`)) && "ok"),
    { timeout: 30_000, what: `replica ${r.node} ready (log ${cluster.dir}/${r.node}.log)` },
  );
  if (ready === "exited") {
    throw new Error(`replica ${r.node} exited at start:\n${readFileSync(r.proc.logFile, "utf8").slice(-2000)}`);
  }
}

async function stopCluster(cluster, keepLogs = false) {
  await Promise.all(cluster.replicas.map((r) => stopProcess(r.proc, "SIGKILL")));
  await stopProcess(cluster.haproxy, "SIGTERM", 5000);
  await stopProcess(cluster.redis, "SIGTERM", 5000);
  // The logs go with the cluster unless asked for (ROOMCAST_TEST_KEEP_LOGS=1).
  if (keepLogs || process.env.ROOMCAST_TEST_KEEP_LOGS === "1") console.log(`# logs kept in ${cluster.dir}`);
  else rmSync(cluster.dir, { recursive: true, force: true });
}

// ---------- jwt ----------

const b64url = (v) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v)).toString("base64url");

/** An HS256 token signed with `secret` (claims: sub, name, exp in seconds, ...). */
export function mintToken(secret, claims) {
  const head = b64url({ alg: "HS256", typ: "JWT" });
  const body = b64url(claims);
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

// ---------- test clients ----------

/**
 * A WebSocket constructor wrapping the global one, for tests that need to see or bend the
 * traffic: `hooks.onSend(frame, ws)` sees each frame the library sends, and
 * `hooks.onReceive(frame)` may return false to drop a frame before the library sees it.
 * `hooks.blocked` makes new connections fail at once (as if the network were down).
 * `sockets` lists every socket made, newest last.
 */
export function wrappedWebSocket(hooks = {}) {
  const sockets = [];
  class Wrapped {
    constructor(url) {
      this.onopen = null;
      this.onmessage = null;
      this.onclose = null;
      this.onerror = null;
      sockets.push(this);
      if (hooks.blocked) {
        this.readyState = 3;
        setTimeout(() => this.onclose?.({ code: 1006, reason: "blocked by the test" }), 0);
        return;
      }
      const ws = new WebSocket(url);
      this.inner = ws;
      ws.onopen = (ev) => this.onopen?.(ev);
      ws.onmessage = (ev) => {
        if (hooks.onReceive && typeof ev.data === "string" && hooks.onReceive(JSON.parse(ev.data), this) === false) {
          return;
        }
        this.onmessage?.(ev);
      };
      ws.onclose = (ev) => this.onclose?.({ code: ev.code, reason: ev.reason });
      ws.onerror = (ev) => this.onerror?.(ev);
    }
    get readyState() {
      return this.inner ? this.inner.readyState : this._readyState;
    }
    set readyState(v) {
      this._readyState = v;
    }
    send(data) {
      this.inner.send(data);
      hooks.onSend?.(JSON.parse(data), this);
    }
    close(code, reason) {
      this.inner?.close(code, reason);
    }
  }
  Wrapped.sockets = sockets;
  return Wrapped;
}

/**
 * The clients of one test suite: `client(url, opts)` makes one (`defaults` under `opts`),
 * `closeAll()` closes every one made so far.
 */
export function clientPool(defaults = {}) {
  let made = [];
  return {
    client(url, opts = {}) {
      const c = new RoomcastClient(url, { ...defaults, ...opts });
      made.push(c);
      return c;
    },
    closeAll() {
      for (const c of made) c.close();
      made = [];
    },
  };
}

/** Collects a room's messages; `waitCount(n)` waits until `n` arrived. */
export function collect(room) {
  const messages = [];
  room.on("message", (m) => messages.push(m));
  return {
    messages,
    texts: () => messages.map((m) => m.text),
    waitCount: (n, timeout = 15_000) =>
      waitFor(() => messages.length >= n, { timeout, what: `${n} messages in ${room.name} (have ${messages.length})` }),
  };
}

/** Resolves with the next `event` of `emitter` (its first argument), or rejects after `timeout`. */
export function nextEvent(emitter, event, timeout = 10_000) {
  return new Promise((res, rej) => {
    const timer = setTimeout(() => {
      off();
      rej(new Error(`no ${event} event within ${timeout} ms`));
    }, timeout);
    const off = emitter.on(event, (arg) => {
      clearTimeout(timer);
      off();
      res(arg);
    });
  });
}

/** Resolves with the StateChange when `client` reaches `state`, or rejects after `timeout`. */
export function untilState(client, state, timeout = 10_000) {
  if (client.state === state) return Promise.resolve({});
  return new Promise((res, rej) => {
    const timer = setTimeout(() => {
      off();
      rej(new Error(`client not ${state} within ${timeout} ms (is ${client.state})`));
    }, timeout);
    const off = client.on("state", (s, change) => {
      if (s !== state) return;
      clearTimeout(timer);
      off();
      res(change);
    });
  });
}
