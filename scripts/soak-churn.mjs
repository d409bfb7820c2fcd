// Churn clients of scripts/soak: real WebSocket clients built on the project's client
// library (clients/js/dist, roomcast-client), run by Node 22 (its global WebSocket).
// Each of WORKERS workers loops until DURATION_S has passed, one short-lived connection
// per cycle:
//   connect (a new RoomcastClient) -> join 1 to 3 rooms of a pool (some with history)
//   -> typing in each -> send a message and wait for its ack (most cycles)
//   -> page the member list (some cycles)
//   -> a forced reconnect (some cycles): the socket is closed under the library
//      (close 3000), which reconnects, re-joins every room with `since` and must
//      deliver a message sent after it
//   -> leave some rooms -> close (the rest are left by the disconnect).
// So the gateways see joins, leaves, presence, typing, members pages, disconnects and
// resumes at a steady rate, from connections that come and go.
//
// Usage: node scripts/soak-churn.mjs URL DURATION_S WORKERS SUMMARY_JSON
// Env:   SOAK_CHURN_ROOMS  rooms in the pool (default 30)
//        SOAK_CHURN_PAUSE_MS  pause inside a cycle, random up to this (default 600)
// Prints progress to stderr every 30 s and writes the totals to SUMMARY_JSON at the end
// (also on SIGTERM/SIGINT). Exit status 0 when every cycle went through, 1 otherwise.
import { RoomcastClient } from "../clients/js/dist/index.js";

const [url, durationArg, workersArg, summaryPath] = process.argv.slice(2);
if (!url || !durationArg || !workersArg || !summaryPath) {
    console.error("usage: node scripts/soak-churn.mjs URL DURATION_S WORKERS SUMMARY_JSON");
    process.exit(2);
}
const { writeFileSync } = await import("node:fs");
const durationMs = Number(durationArg) * 1000;
const workers = Number(workersArg);
const poolSize = Number(process.env.SOAK_CHURN_ROOMS ?? 30);
const pauseMs = Number(process.env.SOAK_CHURN_PAUSE_MS ?? 600);
// Bound on any one awaited step; a step taking longer counts as an error.
const STEP_TIMEOUT_MS = 20000;
const deadline = Date.now() + durationMs;
const runId = Math.random().toString(36).slice(2, 8);

const stats = {
    cycles: 0,
    cycles_failed: 0,
    connects: 0,
    joins: 0,
    leaves: 0,
    typing: 0,
    sends_acked: 0,
    members_pages: 0,
    forced_reconnects: 0,
    resumed_joins: 0,
    messages_received: 0,
    gaps: 0,
    errors: {},
};
const countError = (key) => {
    stats.errors[key] = (stats.errors[key] ?? 0) + 1;
};

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const rnd = (n) => Math.floor(Math.random() * n);
function withTimeout(promise, what) {
    let timer;
    return Promise.race([
        promise,
        new Promise((_, reject) => {
            timer = setTimeout(() => reject(Object.assign(new Error(`${what} timed out`), { code: `timeout_${what}` })), STEP_TIMEOUT_MS);
        }),
    ]).finally(() => clearTimeout(timer));
}
// Resolves when the client reaches `state` (or at once when it is there).
function waitState(client, state) {
    if (client.state === state) return Promise.resolve();
    return new Promise((resolve) => {
        const off = client.on("state", (s) => {
            if (s === state) {
                off();
                resolve();
            }
        });
    });
}

async function cycle(w, i) {
    let socket = null;
    // The library looks the constructor up per attempt: this one remembers the socket, so
    // the cycle can close it under the library (a dropped connection, as far as it knows).
    class TrackedWebSocket extends WebSocket {
        constructor(u, protocols) {
            super(u, protocols);
            socket = this;
        }
    }
    const client = new RoomcastClient(url, {
        name: `churn-${w}-${i % 1000}`,
        WebSocket: TrackedWebSocket,
        backoff: { minMs: 100, maxMs: 1000 },
        // The soak runs the gateways with api.idempotency_ttl = 30s (scripts/soak).
        idempotencyTtlMs: 25000,
    });
    client.on("error", (_err, source) => countError(`client_${source}`));
    try {
        await withTimeout(client.connect(), "connect");
        stats.connects++;
        const n = 1 + rnd(3);
        const names = new Set();
        while (names.size < n) names.add(`soak-churn-${runId}-${rnd(poolSize)}`);
        const rooms = [];
        for (const name of names) {
            const room = await withTimeout(client.join(name, rnd(4) === 0 ? { history: 5 } : {}), "join");
            stats.joins++;
            room.on("message", () => stats.messages_received++);
            room.on("gap", () => stats.gaps++);
            room.on("joined", (e) => {
                if (e.resumed) stats.resumed_joins++;
            });
            rooms.push(room);
        }
        for (const room of rooms) {
            room.typing();
            stats.typing++;
        }
        if (rnd(4) !== 0) {
            await withTimeout(rooms[0].send(`churn ${w}/${i}`), "send");
            stats.sends_acked++;
        }
        if (rnd(5) === 0) {
            await withTimeout(rooms[rooms.length - 1].fetchMembersPage(), "members");
            stats.members_pages++;
        }
        await sleep(rnd(pauseMs));
        if (rnd(5) === 0 && socket) {
            // A connection lost under the client: it reconnects, re-joins with `since`
            // and the send after it must be acked on the new connection.
            const lost = waitState(client, "reconnecting");
            socket.close(3000, "soak: forced reconnect");
            await withTimeout(lost, "drop");
            await withTimeout(waitState(client, "connected"), "reconnect");
            stats.forced_reconnects++;
            await withTimeout(rooms[0].send(`churn ${w}/${i} after reconnect`), "send_after_reconnect");
            stats.sends_acked++;
        }
        const toLeave = rnd(rooms.length + 1);
        for (const room of rooms.slice(0, toLeave)) {
            await withTimeout(room.leave(), "leave");
            stats.leaves++;
        }
    } catch (err) {
        stats.cycles_failed++;
        countError(err?.code ?? String(err?.message ?? err).slice(0, 60));
    } finally {
        client.close();
    }
    stats.cycles++;
}

async function worker(w) {
    // Spread the workers' start over the first second.
    await sleep(rnd(1000));
    for (let i = 0; Date.now() < deadline; i++) {
        await cycle(w, i);
    }
}

const started = Date.now();
function writeSummary() {
    const seconds = (Date.now() - started) / 1000;
    const out = { ...stats, workers, rooms_in_pool: poolSize, seconds, connections_per_second: stats.connects / Math.max(seconds, 1) };
    writeFileSync(summaryPath, JSON.stringify(out, null, 2) + "\n");
    return out;
}
for (const sig of ["SIGTERM", "SIGINT"]) {
    process.on(sig, () => {
        writeSummary();
        process.exit(1);
    });
}
const progress = setInterval(() => {
    console.error(
        `[churn] ${Math.round((Date.now() - started) / 1000)}s: cycles ${stats.cycles} (failed ${stats.cycles_failed}), ` +
            `joins ${stats.joins}, leaves ${stats.leaves}, reconnects ${stats.forced_reconnects}, gaps ${stats.gaps}`,
    );
}, 30000);
await Promise.all(Array.from({ length: workers }, (_, w) => worker(w)));
clearInterval(progress);
const out = writeSummary();
console.error(`[churn] done: ${JSON.stringify(out)}`);
process.exit(out.cycles_failed === 0 && out.gaps === 0 ? 0 : 1);
