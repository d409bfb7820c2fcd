// RoomcastClient: one WebSocket to a roomcast gateway (usually through a load balancer),
// kept open across drains and replica crashes.
//
// The connection's life: open -> (`auth` in jwt mode) -> `welcome` -> join every room ->
// ... -> closed -> wait a jittered exponential backoff -> open again. After a reconnect
// each room is joined again with `since` = its cursor, so the server replays what was
// missed (room.ts delivers each message once), and every send not acknowledged yet is sent
// again with its idempotency key (`idem`), so it is published once (docs/protocol.md,
// "Retrying a send" and "Resuming after a reconnect").
//
// Reconnecting stops for good on close 4003 (the server API disconnected the user), and on
// 4001/4002 (token refused or expired) when there is no `getToken` to get a new token.
//
// A connection that dies without a close (a network change, a frozen replica) is noticed
// by a heartbeat: `ping` after a silence, and the connection is given up when nothing
// comes back in time. In a browser, going back online cuts a pending backoff short.
import { Emitter } from "./emitter.js";
import { FATAL_JOIN_ERRORS, RETRY_SEND_ERRORS, RoomcastError, toErrorCode } from "./errors.js";
import { idemKey, parseServerFrame, tokenExp } from "./protocol.js";
import { Room, TYPING_INTERVAL_MS } from "./room.js";
export const DEFAULT_BACKOFF_MIN_MS = 500;
export const DEFAULT_BACKOFF_MAX_MS = 10_000;
export const DEFAULT_IDEMPOTENCY_TTL_MS = 570_000;
export const DEFAULT_HEARTBEAT_IDLE_MS = 25_000;
export const DEFAULT_HEARTBEAT_TIMEOUT_MS = 10_000;
/** The close code reported for a connection given up for silence (as browsers report a lost one). */
const CLOSE_ABNORMAL = 1006;
/** Wait before retrying a join refused with `unavailable` (or `rate_limited`, `internal`). */
const JOIN_RETRY_MS = 2000;
/** First and largest wait before retrying a send refused with `unavailable`/`rate_limited`. */
const SEND_RETRY_MIN_MS = 500;
const SEND_RETRY_MAX_MS = 10_000;
/** The `ref` of `auth` and `typing` frames (errors for `typing` are ignored). */
const AUTH_REF = "auth";
const TYPING_REF = "typing";
const PING_REF = "ping";
/** Close codes that mean "this token or this user is not welcome". */
const CLOSE_UNAUTHORIZED = 4001;
const CLOSE_EXPIRED = 4002;
const CLOSE_FORBIDDEN = 4003;
/** The backoff delay before reconnect attempt `attempt` (0-based): doubling, ±50% jitter. */
export function backoffDelay(attempt, minMs, maxMs, random = Math.random) {
    const base = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 30));
    return base * (0.5 + random());
}
export class RoomcastClient extends Emitter {
    url;
    opts;
    minMs;
    maxMs;
    idemTtlMs;
    /** `[idleMs, timeoutMs]`, or null: no heartbeat. */
    heartbeat;
    watchdog = null;
    /** When the current connection was opened, and when it last received a frame. */
    openedAt = 0;
    lastHeard = 0;
    /** When the unanswered `ping` went (null: none in flight). */
    pingSentAt = null;
    stateNow = "closed";
    nodeId = null;
    ws = null;
    /** `welcome` came on the current connection. */
    ready = false;
    /** connect() was called (the client is running or stopped). */
    started = false;
    /** Stopped for good (close(), 4003, or no way to get a token): the error says why. */
    stoppedBy = null;
    everConnected = false;
    attempt = 0;
    reconnectTimer = null;
    /** Bumped per connection attempt, so a late async step of an old one does nothing. */
    generation = 0;
    refSeq = 0;
    refs = new Map();
    rooms = new Map();
    /** Unacked sends in the order they were made, by idem key. */
    outbox = new Map();
    /** `leave()` calls waiting for `left`, by room name. */
    leaving = new Map();
    connectWaiters = [];
    token;
    /** The server refused `token`: get another before the next connection. */
    tokenRefused = false;
    refreshing = false;
    /** The message of a `forbidden` error that came without a ref (it precedes close 4003). */
    forbiddenMessage = null;
    host;
    constructor(url, options = {}) {
        super();
        this.url = url;
        this.opts = options;
        if (this.webSocketConstructor() === undefined) {
            throw new TypeError("no global WebSocket here: pass the `WebSocket` option (e.g. the `ws` package)");
        }
        this.minMs = Math.max(1, options.backoff?.minMs ?? DEFAULT_BACKOFF_MIN_MS);
        this.maxMs = Math.max(this.minMs, options.backoff?.maxMs ?? DEFAULT_BACKOFF_MAX_MS);
        this.idemTtlMs = options.idempotencyTtlMs ?? DEFAULT_IDEMPOTENCY_TTL_MS;
        const hb = options.heartbeat;
        this.heartbeat =
            hb === false
                ? null
                : [Math.max(1, hb?.idleMs ?? DEFAULT_HEARTBEAT_IDLE_MS), Math.max(1, hb?.timeoutMs ?? DEFAULT_HEARTBEAT_TIMEOUT_MS)];
        this.token = options.token ?? null;
        this.host = {
            send: (room, text) => this.roomSend(room, text),
            typing: (room) => this.roomTyping(room),
            leave: (room) => this.roomLeave(room),
            members: (room, after) => this.roomMembers(room, after),
        };
    }
    /** `connecting` (first connection), `connected`, `reconnecting`, or `closed` (before `connect()` and after the client stopped). */
    get state() {
        return this.stateNow;
    }
    /** The node id of the replica the client is connected to (from `welcome`), else null. */
    get node() {
        return this.ready ? this.nodeId : null;
    }
    /**
     * Opens the connection; resolves on the first `welcome`. Failed attempts are retried
     * with backoff meanwhile; rejects only when the client stops for good (`close()`, close
     * code 4003, or a refused token and no `getToken`).
     */
    connect() {
        if (this.stoppedBy !== null)
            return Promise.reject(this.stoppedBy);
        if (this.ready)
            return Promise.resolve();
        const p = new Promise((resolve, reject) => this.connectWaiters.push({ resolve, reject }));
        if (!this.started) {
            this.started = true;
            onlineEvents()?.addEventListener("online", this.onOnline);
            this.setState("connecting", {});
            void this.open();
        }
        return p;
    }
    /** The room of that name, if joined (or joining). */
    room(name) {
        return this.rooms.get(name);
    }
    /**
     * Joins a room; resolves on `joined`, rejects with the server's error code. Can be called
     * before `connect()` resolves: the join goes out after `welcome`. The room is joined again
     * after every reconnect (with `since`) until `room.leave()`.
     */
    join(name, options = {}) {
        if (this.stoppedBy !== null)
            return Promise.reject(this.stoppedBy);
        if (this.rooms.has(name))
            return Promise.reject(new RoomcastError("already_joined", `already joined ${name}`));
        const room = new Room(this.host, name, { ...options });
        this.rooms.set(name, room);
        const p = new Promise((resolve, reject) => {
            room.firstJoin = { resolve, reject };
        });
        if (this.ready)
            this.sendJoin(room);
        return p;
    }
    /** Closes the connection and stops reconnecting; pending promises reject with `closed`. */
    close() {
        if (this.stoppedBy !== null)
            return;
        this.stop(new RoomcastError("closed", "the client was closed"), 1000);
    }
    // ---------- the connection ----------
    /** The `WebSocket` option, else the global one as it is now. */
    webSocketConstructor() {
        return this.opts.WebSocket ?? globalThis.WebSocket;
    }
    setState(s, change) {
        this.stateNow = s;
        this.emit("state", s, change);
    }
    nextRef(prefix, info) {
        this.refSeq += 1;
        const ref = `${prefix}${this.refSeq}`;
        if (info !== null)
            this.refs.set(ref, info);
        return ref;
    }
    /** Sends a frame on the current connection; false when there is none ready. */
    sendFrame(frame) {
        const ws = this.ws;
        if (ws === null || !this.ready || ws.readyState !== 1)
            return false;
        try {
            ws.send(JSON.stringify(frame));
            return true;
        }
        catch {
            return false;
        }
    }
    /** The token for the next connection (jwt mode), or null in anonymous mode. */
    async tokenForConnect() {
        const get = this.opts.getToken;
        const held = this.token;
        const expired = held !== null && (tokenExp(held) ?? Infinity) * 1000 <= Date.now();
        if (held !== null && !this.tokenRefused && !(expired && get !== undefined))
            return held;
        if (get === undefined)
            return held;
        const token = await get();
        this.token = token;
        this.tokenRefused = false;
        return token;
    }
    async open() {
        this.reconnectTimer = null;
        if (this.stoppedBy !== null)
            return;
        const gen = ++this.generation;
        let token;
        try {
            token = await this.tokenForConnect();
        }
        catch (err) {
            if (gen !== this.generation || this.stoppedBy !== null)
                return;
            this.emit("error", new RoomcastError("unauthorized", `getToken failed: ${String(err)}`), "getToken");
            this.scheduleReconnect({});
            return;
        }
        if (gen !== this.generation || this.stoppedBy !== null)
            return;
        let ws;
        try {
            const Ctor = this.webSocketConstructor();
            if (Ctor === undefined)
                throw new TypeError("no global WebSocket");
            ws = new Ctor(this.url);
        }
        catch (err) {
            this.emit("error", new RoomcastError("bad_request", `cannot open a WebSocket to ${this.url}: ${String(err)}`), "socket");
            this.scheduleReconnect({});
            return;
        }
        this.ws = ws;
        this.ready = false;
        this.openedAt = this.lastHeard = Date.now();
        this.pingSentAt = null;
        this.armWatchdog();
        ws.onopen = () => {
            // jwt mode: the token goes as the first frame (never in the URL, so never in logs).
            if (this.ws === ws && token !== null)
                ws.send(JSON.stringify({ type: "auth", token, ref: AUTH_REF }));
        };
        ws.onmessage = (ev) => {
            if (this.ws !== ws)
                return;
            this.lastHeard = Date.now();
            this.pingSentAt = null;
            if (typeof ev.data === "string")
                this.onFrame(ev.data);
        };
        ws.onclose = (ev) => {
            if (this.ws === ws)
                this.onDisconnected(ev.code);
        };
        ws.onerror = () => {
            // A close event always follows.
        };
    }
    /** The connection ended (or was abandoned): clean up, then reconnect or stop. */
    onDisconnected(code) {
        const ws = this.ws;
        this.ws = null;
        this.ready = false;
        this.disarmWatchdog();
        if (ws !== null) {
            ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        }
        this.dropConnectionState(new RoomcastError("unavailable", "the connection closed", code));
        if (this.stoppedBy !== null)
            return;
        if (code === CLOSE_FORBIDDEN) {
            this.stop(new RoomcastError("forbidden", this.forbiddenMessage ?? "disconnected by the server", code), null);
            return;
        }
        if (code === CLOSE_UNAUTHORIZED || code === CLOSE_EXPIRED) {
            if (this.opts.getToken === undefined) {
                const why = code === CLOSE_EXPIRED ? "token expired" : "unauthorized";
                this.stop(new RoomcastError("unauthorized", why, code), null);
                return;
            }
            this.tokenRefused = true;
        }
        this.scheduleReconnect({ closeCode: code });
    }
    /** Forgets everything tied to the connection that ended; rooms and the outbox stay. */
    dropConnectionState(err) {
        for (const info of this.refs.values()) {
            if (info.kind === "members")
                info.reject(err);
        }
        this.refs.clear();
        this.refreshing = false;
        for (const room of this.rooms.values()) {
            if (room.retryTimer !== null)
                clearTimeout(room.retryTimer);
            room.retryTimer = null;
            room.joinRef = null;
            if (room.phase !== "left")
                room.phase = "offline";
        }
        for (const out of this.outbox.values()) {
            out.ref = null;
            if (out.retryTimer !== null)
                clearTimeout(out.retryTimer);
            out.retryTimer = null;
        }
        // A membership ends with its connection: a leave in progress is done.
        for (const waiters of this.leaving.values())
            for (const done of waiters)
                done();
        this.leaving.clear();
    }
    disarmWatchdog() {
        if (this.watchdog !== null)
            clearTimeout(this.watchdog);
        this.watchdog = null;
    }
    /** Sets the heartbeat's timer for the next thing due on the current connection. */
    armWatchdog() {
        this.disarmWatchdog();
        if (this.heartbeat === null || this.ws === null)
            return;
        const [idle, timeout] = this.heartbeat;
        let due;
        if (!this.ready)
            due = this.openedAt + idle + timeout;
        else if (this.pingSentAt === null)
            due = this.lastHeard + idle;
        else
            due = this.pingSentAt + timeout;
        this.watchdog = setTimeout(() => this.onWatchdog(), Math.max(0, due - Date.now()));
    }
    /** The heartbeat's timer: send `ping` after a silence, give up after an unanswered one. */
    onWatchdog() {
        this.watchdog = null;
        const ws = this.ws;
        if (ws === null || this.stoppedBy !== null || this.heartbeat === null)
            return;
        const [idle, timeout] = this.heartbeat;
        const now = Date.now();
        const silent = !this.ready
            ? now - this.openedAt >= idle + timeout
            : this.pingSentAt !== null && now - this.pingSentAt >= timeout;
        if (silent) {
            // Nothing came back: the connection is dead though no close said so. Give it up.
            this.onDisconnected(CLOSE_ABNORMAL);
            try {
                ws.close(1000);
            }
            catch {
                // already closing
            }
            return;
        }
        if (this.ready && this.pingSentAt === null && now - this.lastHeard >= idle) {
            if (this.sendFrame({ type: "ping", ref: PING_REF }))
                this.pingSentAt = now;
        }
        this.armWatchdog();
    }
    /** The browser is back online: a reconnect waiting for its backoff goes now. */
    onOnline = () => {
        if (this.reconnectTimer === null || this.stoppedBy !== null)
            return;
        clearTimeout(this.reconnectTimer);
        this.reconnectTimer = null;
        this.attempt = 0;
        void this.open();
    };
    scheduleReconnect(change) {
        if (this.stoppedBy !== null || this.reconnectTimer !== null)
            return;
        const delay = backoffDelay(this.attempt, this.minMs, this.maxMs);
        this.attempt += 1;
        this.setState(this.everConnected ? "reconnecting" : "connecting", { ...change, retryInMs: delay });
        this.reconnectTimer = setTimeout(() => void this.open(), delay);
    }
    /** Stops for good: closes the connection, rejects everything pending with `err`. */
    stop(err, closeCode) {
        this.stoppedBy = err;
        this.generation += 1;
        onlineEvents()?.removeEventListener("online", this.onOnline);
        this.disarmWatchdog();
        if (this.reconnectTimer !== null)
            clearTimeout(this.reconnectTimer);
        this.reconnectTimer = null;
        const ws = this.ws;
        if (ws !== null) {
            this.ws = null;
            ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
            try {
                ws.close(closeCode ?? 1000);
            }
            catch {
                // already closing
            }
        }
        this.ready = false;
        this.dropConnectionState(err);
        for (const room of this.rooms.values()) {
            const first = room.firstJoin;
            room.firstJoin = null;
            first?.reject(err);
        }
        for (const out of this.outbox.values())
            out.reject(err);
        this.outbox.clear();
        const waiters = this.connectWaiters;
        this.connectWaiters = [];
        for (const w of waiters)
            w.reject(err);
        const change = { error: err };
        if (err.closeCode !== undefined)
            change.closeCode = err.closeCode;
        this.setState("closed", change);
    }
    // ---------- frames from the server ----------
    onFrame(data) {
        const f = parseServerFrame(data);
        if (f === null)
            return;
        switch (f.type) {
            case "welcome":
                this.onWelcome(f.node);
                break;
            case "joined":
                this.onJoined(f);
                break;
            case "message":
                this.rooms.get(f.room)?.onMessage(f);
                break;
            case "presence":
                this.rooms.get(f.room)?.onPresence(f);
                break;
            case "typing":
                this.rooms.get(f.room)?.onTyping(f.user);
                break;
            case "members":
                this.onMembers(f);
                break;
            case "ack":
                this.onAck(f);
                break;
            case "left":
                this.onLeft(f);
                break;
            case "error":
                this.onError(f);
                break;
            case "expiring":
                this.emit("expiring", { inMs: f.in_ms });
                void this.onExpiring();
                break;
            case "refreshed":
                if (f.ref !== undefined)
                    this.refs.delete(f.ref);
                this.emit("refreshed", { exp: f.exp });
                break;
        }
    }
    onWelcome(node) {
        this.ready = true;
        this.attempt = 0;
        this.nodeId = node;
        this.everConnected = true;
        this.armWatchdog();
        this.forbiddenMessage = null;
        // The joins go first, so that `connected` listeners find every room `joining`.
        for (const room of this.rooms.values()) {
            if (room.phase !== "left")
                this.sendJoin(room);
        }
        this.setState("connected", { node });
        const waiters = this.connectWaiters;
        this.connectWaiters = [];
        for (const w of waiters)
            w.resolve();
    }
    sendJoin(room) {
        if (room.phase === "joining" || room.phase === "joined" || room.phase === "left")
            return;
        const frame = { type: "join", room: room.name };
        // jwt mode ignores `name` (the token names the user); anonymous mode needs it.
        const name = room.options.displayName ?? this.opts.name;
        if (name !== undefined)
            frame.name = name;
        if (room.options.token !== undefined)
            frame.token = room.options.token;
        // A rejoin resumes after the cursor; a first join may ask for the recent history.
        room.since = room.cursor;
        if (room.since !== null)
            frame.since = room.since;
        else if ((room.options.history ?? 0) > 0)
            frame.history = room.options.history;
        const ref = this.nextRef("j", { kind: "join", room });
        frame.ref = ref;
        if (this.sendFrame(frame)) {
            room.phase = "joining";
            room.joinRef = ref;
        }
        else {
            this.refs.delete(ref);
        }
    }
    onJoined(f) {
        const room = this.rooms.get(f.room);
        if (room === undefined || room.phase !== "joining")
            return;
        if (room.joinRef !== null)
            this.refs.delete(room.joinRef);
        room.onJoined(f);
        // What was not acked before the reconnect goes again, with the same idem keys.
        this.flushOutbox(room, true);
    }
    onAck(f) {
        if (f.ref === null)
            return;
        const info = this.refs.get(f.ref);
        if (info === undefined || info.kind !== "send")
            return;
        this.refs.delete(f.ref);
        const out = this.outbox.get(info.idem);
        if (out === undefined || out.ref !== f.ref)
            return;
        this.outbox.delete(out.idem);
        out.resolve({ id: f.id, duplicate: f.duplicate });
        // Publishing works: sends waiting for a retry can go now.
        this.flushOutbox(out.room, true);
    }
    onMembers(f) {
        if (f.ref === undefined)
            return;
        const info = this.refs.get(f.ref);
        if (info === undefined || info.kind !== "members")
            return;
        this.refs.delete(f.ref);
        info.resolve(f);
    }
    onLeft(f) {
        if (f.reason === undefined) {
            // The answer to our `leave` (the room was taken out of `rooms` when it was sent).
            const waiters = this.leaving.get(f.room);
            const done = waiters?.shift();
            if (waiters !== undefined && waiters.length === 0)
                this.leaving.delete(f.room);
            done?.();
            return;
        }
        const room = this.rooms.get(f.room);
        if (room === undefined)
            return;
        this.endRoom(room, f.reason, new RoomcastError("not_joined", `removed from ${room.name}`));
    }
    /** The membership ended for good (removed, or a rejoin refused): drop the room and its sends. */
    endRoom(room, reason, err) {
        if (this.rooms.get(room.name) === room)
            this.rooms.delete(room.name);
        for (const out of [...this.outbox.values()]) {
            if (out.room !== room)
                continue;
            this.outbox.delete(out.idem);
            if (out.retryTimer !== null)
                clearTimeout(out.retryTimer);
            out.reject(err);
        }
        room.onLeft(reason);
    }
    onError(f) {
        const code = toErrorCode(f.code);
        const err = new RoomcastError(code, f.message);
        if (f.ref === TYPING_REF || f.ref === PING_REF)
            return; // a notice, or a gateway without `ping`: it answered
        if (f.ref === AUTH_REF || (code === "unauthorized" && !this.ready)) {
            // The token was refused (bad, expired): get another, or stop. A gateway in anonymous
            // mode answers `bad_request` (no token is needed): the application may want to know.
            if (code === "unauthorized")
                this.onTokenRefused(err);
            else
                this.emit("error", err, "auth");
            return;
        }
        const info = f.ref !== undefined ? this.refs.get(f.ref) : undefined;
        if (info === undefined || f.ref === undefined) {
            // Not an answer to anything in flight: before close 4003 the server says why.
            if (code === "forbidden")
                this.forbiddenMessage = f.message;
            this.emit("error", err, "server");
            return;
        }
        this.refs.delete(f.ref);
        switch (info.kind) {
            case "join":
                this.onJoinError(info.room, code, err);
                return;
            case "send":
                this.onSendError(info.idem, f.ref, code, err);
                return;
            case "leave": {
                // `not_joined`: the membership is gone anyway.
                const waiters = this.leaving.get(info.room);
                const done = waiters?.shift();
                if (waiters !== undefined && waiters.length === 0)
                    this.leaving.delete(info.room);
                done?.();
                return;
            }
            case "members":
                info.reject(err);
                return;
            case "refresh":
                this.emit("error", err, "refresh");
                return;
        }
    }
    onTokenRefused(err) {
        if (this.opts.getToken === undefined) {
            this.stop(new RoomcastError("unauthorized", err.message.replace(/^unauthorized: /, ""), CLOSE_UNAUTHORIZED), 1000);
            return;
        }
        // Abandon this connection and reconnect with a fresh token.
        this.tokenRefused = true;
        const ws = this.ws;
        this.onDisconnected(CLOSE_UNAUTHORIZED);
        try {
            ws?.close(1000);
        }
        catch {
            // already closing
        }
    }
    onJoinError(room, code, err) {
        if (this.rooms.get(room.name) !== room || room.phase !== "joining")
            return;
        room.joinRef = null;
        if (code === "already_joined") {
            // Cannot happen on a fresh connection; treat the room as joined as it was.
            room.phase = "joined";
            this.flushOutbox(room, true);
            return;
        }
        room.phase = "offline";
        if (FATAL_JOIN_ERRORS.has(code)) {
            const first = room.firstJoin;
            room.firstJoin = null;
            if (first !== null) {
                this.rooms.delete(room.name);
                room.phase = "left";
                first.reject(err);
            }
            else {
                this.endRoom(room, code, err);
            }
            return;
        }
        // `draining`: the connection closes soon; the rejoin follows the reconnect. Otherwise
        // (`unavailable`, `rate_limited`, `internal`) try again in a while.
        if (code === "draining")
            return;
        room.retryTimer = setTimeout(() => {
            room.retryTimer = null;
            if (this.ready && this.rooms.get(room.name) === room)
                this.sendJoin(room);
        }, JOIN_RETRY_MS * (0.5 + Math.random()));
    }
    onSendError(idem, ref, code, err) {
        const out = this.outbox.get(idem);
        if (out === undefined || out.ref !== ref)
            return;
        out.ref = null;
        if (RETRY_SEND_ERRORS.has(code)) {
            // Nothing was published (or, after `unavailable`, maybe it was: the same idem key
            // makes the retry harmless).
            const base = Math.min(SEND_RETRY_MAX_MS, SEND_RETRY_MIN_MS * 2 ** Math.min(out.failures, 16));
            out.failures += 1;
            out.retryTimer = setTimeout(() => {
                out.retryTimer = null;
                if (this.outbox.get(out.idem) === out)
                    this.flushOutbox(out.room, false);
            }, base * (0.5 + Math.random()));
            return;
        }
        // `draining`: the replica is going away; the send goes again (same key) once the room
        // is rejoined after the reconnect.
        if (code === "draining")
            return;
        this.outbox.delete(out.idem);
        out.reject(err);
    }
    async onExpiring() {
        const get = this.opts.getToken;
        if (get === undefined || this.refreshing)
            return;
        const gen = this.generation;
        this.refreshing = true;
        try {
            const token = await get();
            if (gen !== this.generation || this.stoppedBy !== null)
                return;
            // Reconnects authenticate with the new token too.
            this.token = token;
            this.tokenRefused = false;
            this.sendFrame({ type: "refresh", token, ref: this.nextRef("r", { kind: "refresh" }) });
        }
        catch (err) {
            this.emit("error", new RoomcastError("unauthorized", `getToken failed: ${String(err)}`), "getToken");
        }
        finally {
            if (gen === this.generation)
                this.refreshing = false;
        }
    }
    // ---------- what rooms ask for ----------
    /** Sends every unacked message of `room` not in flight, in order (`now`: also those waiting for a retry). */
    flushOutbox(room, now) {
        if (room.phase !== "joined" || !this.ready)
            return;
        for (const out of this.outbox.values()) {
            if (out.room !== room || out.ref !== null)
                continue;
            if (out.retryTimer !== null) {
                if (!now)
                    continue;
                clearTimeout(out.retryTimer);
                out.retryTimer = null;
            }
            if (out.firstSentAt !== null && Date.now() - out.firstSentAt > this.idemTtlMs) {
                // The server may have forgotten the key: a retry could publish it twice.
                this.outbox.delete(out.idem);
                out.reject(new RoomcastError("unavailable", "not acknowledged within the idempotency window; it may or may not have been published"));
                continue;
            }
            const ref = this.nextRef("s", { kind: "send", idem: out.idem });
            if (!this.sendFrame({ type: "send", room: room.name, text: out.text, idem: out.idem, ref })) {
                this.refs.delete(ref);
                return; // not connected: everything goes once the room is rejoined
            }
            out.ref = ref;
            out.firstSentAt ??= Date.now();
        }
    }
    roomSend(room, text) {
        if (this.stoppedBy !== null)
            return Promise.reject(this.stoppedBy);
        if (room.phase === "left" || this.rooms.get(room.name) !== room) {
            return Promise.reject(new RoomcastError("not_joined", `not joined to ${room.name}`));
        }
        return new Promise((resolve, reject) => {
            const out = {
                idem: idemKey(), room, text, ref: null, firstSentAt: null, retryTimer: null, failures: 0, resolve, reject,
            };
            this.outbox.set(out.idem, out);
            // Anything older still waiting for a retry goes first, so the order is kept.
            this.flushOutbox(room, true);
        });
    }
    roomTyping(room) {
        if (room.phase !== "joined")
            return;
        const now = Date.now();
        if (now - room.typingSentAt < TYPING_INTERVAL_MS)
            return;
        if (this.sendFrame({ type: "typing", room: room.name, ref: TYPING_REF }))
            room.typingSentAt = now;
    }
    roomLeave(room) {
        if (room.phase === "left" || this.rooms.get(room.name) !== room)
            return Promise.resolve();
        const wasJoined = room.phase === "joined" || room.phase === "joining";
        this.endRoom(room, "left", new RoomcastError("not_joined", `left ${room.name}`));
        const first = room.firstJoin;
        room.firstJoin = null;
        first?.reject(new RoomcastError("not_joined", `left ${room.name} before it was joined`));
        if (!wasJoined || !this.ready)
            return Promise.resolve();
        return new Promise((resolve) => {
            const ref = this.nextRef("l", { kind: "leave", room: room.name });
            if (!this.sendFrame({ type: "leave", room: room.name, ref })) {
                this.refs.delete(ref);
                resolve();
                return;
            }
            const waiters = this.leaving.get(room.name) ?? [];
            waiters.push(resolve);
            this.leaving.set(room.name, waiters);
        });
    }
    roomMembers(room, after) {
        if (this.stoppedBy !== null)
            return Promise.reject(this.stoppedBy);
        if (room.phase !== "joined" || !this.ready) {
            return Promise.reject(new RoomcastError("not_joined", `${room.name} is not joined right now`));
        }
        return new Promise((resolve, reject) => {
            const onPage = (f) => {
                const page = { members: f.members, memberCount: f.member_count };
                if (f.next !== undefined)
                    page.next = f.next;
                resolve(page);
            };
            const ref = this.nextRef("m", { kind: "members", room, resolve: onPage, reject });
            const frame = { type: "members", room: room.name, ref };
            if (after !== undefined)
                frame.after = after;
            if (!this.sendFrame(frame)) {
                this.refs.delete(ref);
                reject(new RoomcastError("unavailable", "not connected"));
            }
        });
    }
}
/** Where a browser says it is back online (`online` events), if anywhere. */
function onlineEvents() {
    const g = globalThis;
    const isTarget = typeof g.addEventListener === "function" && typeof g.removeEventListener === "function";
    return isTarget ? globalThis : null;
}
