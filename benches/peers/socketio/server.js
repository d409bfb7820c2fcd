// Socket.IO 4 comparison peer for roomcast's bench (see BENCHMARKS.md, scenario "socketio").
//
// The same rooms and message flow as roomcast protocol v1, as Socket.IO events:
//   client "join" {room, name, ref}  -> "joined" {room, you, members: [], offset}
//   client "send" {room, text, ref}  -> "message" {room, id, from, text, ts} to the whole room
//                                       (sender included) and "ack" {ref, id} to the sender
//   refusals                         -> "error" {code, message, ref}
// Replicas share rooms through @socket.io/redis-adapter. For loss counting each room gets a
// per-room sequence from Redis INCR: the peer's equivalent of roomcast's room offset (the
// Redis stream id). It is not a history: "since" is not supported (a resume answers
// recovered:false).
//
// Environment: PORT (3000), HOST (127.0.0.1), REDIS_URL (redis://127.0.0.1:6379).
"use strict";

const { createServer } = require("node:http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const port = Number(process.env.PORT || 3000);
const host = process.env.HOST || "127.0.0.1";
const redisUrl = process.env.REDIS_URL || "redis://127.0.0.1:6379";
const ROOM_RE = /^[A-Za-z0-9._:-]{1,64}$/;
const MAX_TEXT_BYTES = 4096;
const MAX_ROOMS = 16;
const PALETTE = ["#ef4444", "#f97316", "#eab308", "#22c55e", "#14b8a6", "#3b82f6", "#8b5cf6", "#ec4899"];

function color(name) {
  let h = 2166136261;
  for (let i = 0; i < name.length; i++) {
    h = Math.imul(h ^ name.charCodeAt(i), 16777619) >>> 0;
  }
  return PALETTE[h % PALETTE.length];
}

function refOf(p) {
  return p && typeof p.ref === "string" ? p.ref : undefined;
}

function refuse(socket, code, message, ref) {
  const e = { code, message };
  if (ref !== undefined) e.ref = ref;
  socket.emit("error", e);
}

async function main() {
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  const seq = pub.duplicate(); // INCR / GET of the per-room sequences
  for (const c of [pub, sub, seq]) c.on("error", (e) => console.error("redis:", e.message));
  await Promise.all([pub.connect(), sub.connect(), seq.connect()]);

  const httpServer = createServer((req, res) => {
    res.writeHead(req.url === "/healthz" ? 200 : 404, { "content-type": "text/plain" });
    res.end(req.url === "/healthz" ? "ok" : "not found");
  });
  const io = new Server(httpServer, {
    transports: ["websocket"],
    serveClient: false,
    maxHttpBufferSize: 16384,
    pingInterval: 20000,
    pingTimeout: 60000,
  });
  io.adapter(createAdapter(pub, sub));

  io.on("connection", (socket) => {
    const joined = new Map(); // room -> user

    socket.on("join", async (p) => {
      const ref = refOf(p);
      if (!p || typeof p.room !== "string" || typeof p.name !== "string") {
        return refuse(socket, "bad_request", "join needs room and name", ref);
      }
      const name = p.name.trim();
      if (!ROOM_RE.test(p.room)) return refuse(socket, "invalid_room", "bad room name", ref);
      if (name.length < 1 || name.length > 32 || /[\u0000-\u001f\u007f]/.test(name)) {
        return refuse(socket, "invalid_name", "bad display name", ref);
      }
      if (joined.has(p.room)) return refuse(socket, "already_joined", "already joined", ref);
      if (joined.size >= MAX_ROOMS) return refuse(socket, "too_many_rooms", "too many rooms", ref);
      const user = { name, color: color(name) };
      joined.set(p.room, user);
      socket.join(p.room);
      // Read the sequence after joining: every later id reaches this socket.
      const offset = (await seq.get(`sio:{${p.room}}:seq`)) || "0";
      const answer = { room: p.room, you: user, members: [], offset };
      if (typeof p.since === "string") answer.recovered = false;
      socket.emit("joined", answer);
      socket.to(p.room).emit("presence", { room: p.room, event: "join", user });
    });

    socket.on("send", async (p) => {
      const ref = refOf(p);
      if (!p || typeof p.room !== "string" || typeof p.text !== "string") {
        return refuse(socket, "bad_request", "send needs room and text", ref);
      }
      const user = joined.get(p.room);
      if (!user) return refuse(socket, "not_joined", "join the room first", ref);
      if (p.text.length === 0 || Buffer.byteLength(p.text) > MAX_TEXT_BYTES) {
        return refuse(socket, "too_large", "text too large", ref);
      }
      let id;
      try {
        id = String(await seq.incr(`sio:{${p.room}}:seq`));
      } catch (e) {
        return refuse(socket, "unavailable", "bus unavailable", ref);
      }
      io.to(p.room).emit("message", { room: p.room, id, from: user, text: p.text, ts: Date.now() });
      socket.emit("ack", { ref: ref === undefined ? null : ref, id });
    });

    socket.on("leave", (p) => {
      const room = p && p.room;
      const user = joined.get(room);
      if (!user) return refuse(socket, "not_joined", "not in that room", refOf(p));
      joined.delete(room);
      socket.leave(room);
      socket.emit("left", { room });
      socket.to(room).emit("presence", { room, event: "leave", user });
    });

    socket.on("disconnect", () => {
      for (const [room, user] of joined) {
        socket.to(room).emit("presence", { room, event: "leave", user });
      }
      joined.clear();
    });
  });

  httpServer.listen(port, host, () => {
    console.log(JSON.stringify({ event: "listening", host, port, pid: process.pid }));
  });
  const stop = () => {
    io.close();
    Promise.allSettled([pub.quit(), sub.quit(), seq.quit()]).finally(() => process.exit(0));
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
