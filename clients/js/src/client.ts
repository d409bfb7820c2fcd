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
import type { AckFrame, ErrorFrame, JoinedFrame, LeftFrame, MembersFrame, ServerFrame, User } from "./protocol.js";
import { Room, TYPING_INTERVAL_MS } from "./room.js";
import type { JoinOptions, MembersPage, RoomHost, SendResult } from "./room.js";

/**
 * An event handler property. Checked like a method (bivariantly), so the DOM's
 * `(this: WebSocket, ev: MessageEvent) => any` and `ws`'s handlers fit.
 */
type Handler<T> = { bivarianceHack(ev: T): void }["bivarianceHack"];

/** The least a WebSocket must offer: the browser's and Node's global one, or `ws`. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: Handler<unknown> | null;
  onmessage: Handler<{ data: unknown }> | null;
  onclose: Handler<{ code: number; reason: string }> | null;
  onerror: Handler<unknown> | null;
}

/** A WebSocket constructor (`WebSocket` in browsers and Node >= 22; `ws` elsewhere). */
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface BackoffOptions {
  /** The first reconnect delay, before jitter (default 500 ms). */
  minMs?: number;
  /** The largest delay, before jitter (default 10,000 ms). */
  maxMs?: number;
}

export interface ClientOptions {
  /** jwt mode: the connection token. */
  token?: string;
  /**
   * jwt mode: returns a (new) connection token. Called for the first token when `token`
   * is not given, on `expiring` (the answer is sent as `refresh`), and before reconnecting
   * after the server refused the token (`unauthorized`, close 4001/4002) or when the
   * token held has expired.
   */
  getToken?: () => string | Promise<string>;
  /** Anonymous mode: the display name used by `join` unless it gives `displayName`. */
  name?: string;
  /** Reconnect delays: `minMs` doubling up to `maxMs`, each randomised by ±50%. */
  backoff?: BackoffOptions;
  /**
   * The WebSocket constructor. Default: `globalThis.WebSocket`, looked up at each
   * connection attempt (so a constructor installed later, e.g. by a test, is used).
   */
  WebSocket?: WebSocketConstructor;
  /**
   * How long after its first attempt a send may still be retried (default 570,000 ms,
   * under the server's `api.idempotency_ttl` of 10 min). Past it the server may have
   * forgotten the key, so a retry could publish twice: the send rejects with
   * `unavailable` instead (it may or may not have been published).
   */
  idempotencyTtlMs?: number;
  /**
   * Noticing a connection that died without a close (a network change, a frozen peer),
   * which browsers may take minutes to report: after `idleMs` (default 25,000) without a
   * frame from the server the client sends `ping`, and when nothing at all comes back
   * within `timeoutMs` more (default 10,000) it drops the connection and reconnects
   * (`reconnecting` with close code 1006). A connection that gets no `welcome` within
   * `idleMs + timeoutMs` is dropped the same way. `false` turns this off.
   */
  heartbeat?: HeartbeatOptions | false;
}

export interface HeartbeatOptions {
  /** Silence after which the client sends `ping`. */
  idleMs?: number;
  /** How long it then waits for any frame before it gives the connection up. */
  timeoutMs?: number;
}

export type ConnectionState = "connecting" | "connected" | "reconnecting" | "closed";

/** Details of a state change: why the connection closed, or why the client stopped. */
export interface StateChange {
  /** The WebSocket close code of the connection that ended, if any. */
  closeCode?: number;
  /** With `closed`: why the client stopped (`closed` after `close()`). */
  error?: RoomcastError;
  /** With `connected`: the replica's node id (`welcome`). */
  node?: string;
  /** With `connecting`/`reconnecting` after an attempt ended: the wait before the next one, ms. */
  retryInMs?: number;
}

/** jwt mode: the server's notice that the connection token expires in `inMs` ms. */
export interface ExpiringEvent {
  inMs: number;
}

/** jwt mode: the server took a renewed token (`refresh`); `exp` is its expiry, Unix seconds. */
export interface RefreshedEvent {
  exp: number;
}

/**
 * What an `error` event is about: `"server"`, an `error` frame that answers nothing the
 * library sent; `"auth"`, the server refused the `auth` frame other than as `unauthorized`
 * (`bad_request`: the gateway is in anonymous mode and needs no token); `"refresh"`, the
 * server refused a renewed token; `"getToken"`, the `getToken` option threw or rejected;
 * `"socket"`, no WebSocket could be created.
 */
export type ErrorSource = "server" | "auth" | "refresh" | "getToken" | "socket";

export interface ClientEvents {
  state: [ConnectionState, StateChange];
  /**
   * jwt mode: an `expiring` notice came. With `getToken` the library renews the token
   * (a `refreshed` event, or an `error` event from `"getToken"`/`"refresh"`); without it
   * the connection closes at the token's `exp` (4002) and the client stops.
   */
  expiring: [ExpiringEvent];
  /** jwt mode: a renewed token was accepted. */
  refreshed: [RefreshedEvent];
  /** Informational (the client carries on); see `ErrorSource`. */
  error: [RoomcastError, ErrorSource];
}

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

/** One send not acknowledged yet. `ref`: the copy in flight on this connection (null: none). */
interface Outgoing {
  idem: string;
  room: Room;
  text: string;
  ref: string | null;
  /** When it first went out (Date.now()), null before; retries are bounded by the idem TTL. */
  firstSentAt: number | null;
  retryTimer: ReturnType<typeof setTimeout> | null;
  failures: number;
  resolve: (r: SendResult) => void;
  reject: (e: RoomcastError) => void;
}

/** What a `ref` on the current connection stands for. */
type RefInfo =
  | { kind: "join"; room: Room }
  | { kind: "send"; idem: string }
  | { kind: "leave"; room: string }
  | { kind: "members"; room: Room; resolve: (f: MembersFrame) => void; reject: (e: RoomcastError) => void }
  | { kind: "refresh" };

/** The backoff delay before reconnect attempt `attempt` (0-based): doubling, ±50% jitter. */
export function backoffDelay(attempt: number, minMs: number, maxMs: number, random: () => number = Math.random): number {
  const base = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 30));
  return base * (0.5 + random());
}

export class RoomcastClient extends Emitter<ClientEvents> {
  private readonly url: string;
  private readonly opts: ClientOptions;
  private readonly minMs: number;
  private readonly maxMs: number;
  private readonly idemTtlMs: number;
  /** `[idleMs, timeoutMs]`, or null: no heartbeat. */
  private readonly heartbeat: readonly [number, number] | null;
  private watchdog: ReturnType<typeof setTimeout> | null = null;
  /** When the current connection was opened, and when it last received a frame. */
  private openedAt = 0;
  private lastHeard = 0;
  /** When the unanswered `ping` went (null: none in flight). */
  private pingSentAt: number | null = null;
  private stateNow: ConnectionState = "closed";
  private nodeId: string | null = null;
  private ws: WebSocketLike | null = null;
  /** `welcome` came on the current connection. */
  private ready = false;
  /** connect() was called (the client is running or stopped). */
  private started = false;
  /** Stopped for good (close(), 4003, or no way to get a token): the error says why. */
  private stoppedBy: RoomcastError | null = null;
  private everConnected = false;
  private attempt = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  /** Bumped per connection attempt, so a late async step of an old one does nothing. */
  private generation = 0;
  private refSeq = 0;
  private readonly refs = new Map<string, RefInfo>();
  private readonly rooms = new Map<string, Room>();
  /** Unacked sends in the order they were made, by idem key. */
  private readonly outbox = new Map<string, Outgoing>();
  /** `leave()` calls waiting for `left`, by room name. */
  private readonly leaving = new Map<string, Array<() => void>>();
  private connectWaiters: Array<{ resolve: () => void; reject: (e: RoomcastError) => void }> = [];
  private token: string | null;
  /** The server refused `token`: get another before the next connection. */
  private tokenRefused = false;
  private refreshing = false;
  /** The message of a `forbidden` error that came without a ref (it precedes close 4003). */
  private forbiddenMessage: string | null = null;
  private readonly host: RoomHost;

  constructor(url: string, options: ClientOptions = {}) {
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
  get state(): ConnectionState {
    return this.stateNow;
  }

  /** The node id of the replica the client is connected to (from `welcome`), else null. */
  get node(): string | null {
    return this.ready ? this.nodeId : null;
  }

  /**
   * Opens the connection; resolves on the first `welcome`. Failed attempts are retried
   * with backoff meanwhile; rejects only when the client stops for good (`close()`, close
   * code 4003, or a refused token and no `getToken`).
   */
  connect(): Promise<void> {
    if (this.stoppedBy !== null) return Promise.reject(this.stoppedBy);
    if (this.ready) return Promise.resolve();
    const p = new Promise<void>((resolve, reject) => this.connectWaiters.push({ resolve, reject }));
    if (!this.started) {
      this.started = true;
      onlineEvents()?.addEventListener("online", this.onOnline);
      this.setState("connecting", {});
      void this.open();
    }
    return p;
  }

  /** The room of that name, if joined (or joining). */
  room(name: string): Room | undefined {
    return this.rooms.get(name);
  }

  /**
   * Joins a room; resolves on `joined`, rejects with the server's error code. Can be called
   * before `connect()` resolves: the join goes out after `welcome`. The room is joined again
   * after every reconnect (with `since`) until `room.leave()`.
   */
  join(name: string, options: JoinOptions = {}): Promise<Room> {
    if (this.stoppedBy !== null) return Promise.reject(this.stoppedBy);
    if (this.rooms.has(name)) return Promise.reject(new RoomcastError("already_joined", `already joined ${name}`));
    const room = new Room(this.host, name, { ...options });
    this.rooms.set(name, room);
    const p = new Promise<Room>((resolve, reject) => {
      room.firstJoin = { resolve, reject };
    });
    if (this.ready) this.sendJoin(room);
    return p;
  }

  /** Closes the connection and stops reconnecting; pending promises reject with `closed`. */
  close(): void {
    if (this.stoppedBy !== null) return;
    this.stop(new RoomcastError("closed", "the client was closed"), 1000);
  }

  // ---------- the connection ----------

  /** The `WebSocket` option, else the global one as it is now. */
  private webSocketConstructor(): WebSocketConstructor | undefined {
    return this.opts.WebSocket ?? (globalThis as unknown as { WebSocket?: WebSocketConstructor }).WebSocket;
  }

  private setState(s: ConnectionState, change: StateChange): void {
    this.stateNow = s;
    this.emit("state", s, change);
  }

  private nextRef(prefix: string, info: RefInfo | null): string {
    this.refSeq += 1;
    const ref = `${prefix}${this.refSeq}`;
    if (info !== null) this.refs.set(ref, info);
    return ref;
  }

  /** Sends a frame on the current connection; false when there is none ready. */
  private sendFrame(frame: Record<string, unknown>): boolean {
    const ws = this.ws;
    if (ws === null || !this.ready || ws.readyState !== 1) return false;
    try {
      ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  /** The token for the next connection (jwt mode), or null in anonymous mode. */
  private async tokenForConnect(): Promise<string | null> {
    const get = this.opts.getToken;
    const held = this.token;
    const expired = held !== null && (tokenExp(held) ?? Infinity) * 1000 <= Date.now();
    if (held !== null && !this.tokenRefused && !(expired && get !== undefined)) return held;
    if (get === undefined) return held;
    const token = await get();
    this.token = token;
    this.tokenRefused = false;
    return token;
  }

  private async open(): Promise<void> {
    this.reconnectTimer = null;
    if (this.stoppedBy !== null) return;
    const gen = ++this.generation;
    let token: string | null;
    try {
      token = await this.tokenForConnect();
    } catch (err) {
      if (gen !== this.generation || this.stoppedBy !== null) return;
      this.emit("error", new RoomcastError("unauthorized", `getToken failed: ${String(err)}`), "getToken");
      this.scheduleReconnect({});
      return;
    }
    if (gen !== this.generation || this.stoppedBy !== null) return;
    let ws: WebSocketLike;
    try {
      const Ctor = this.webSocketConstructor();
      if (Ctor === undefined) throw new TypeError("no global WebSocket");
      ws = new Ctor(this.url);
    } catch (err) {
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
      if (this.ws === ws && token !== null) ws.send(JSON.stringify({ type: "auth", token, ref: AUTH_REF }));
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      this.lastHeard = Date.now();
      this.pingSentAt = null;
      if (typeof ev.data === "string") this.onFrame(ev.data);
    };
    ws.onclose = (ev) => {
      if (this.ws === ws) this.onDisconnected(ev.code);
    };
    ws.onerror = () => {
      // A close event always follows.
    };
  }

  /** The connection ended (or was abandoned): clean up, then reconnect or stop. */
  private onDisconnected(code: number): void {
    const ws = this.ws;
    this.ws = null;
    this.ready = false;
    this.disarmWatchdog();
    if (ws !== null) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    }
    this.dropConnectionState(new RoomcastError("unavailable", "the connection closed", code));
    if (this.stoppedBy !== null) return;
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
  private dropConnectionState(err: RoomcastError): void {
    for (const info of this.refs.values()) {
      if (info.kind === "members") info.reject(err);
    }
    this.refs.clear();
    this.refreshing = false;
    for (const room of this.rooms.values()) {
      if (room.retryTimer !== null) clearTimeout(room.retryTimer);
      room.retryTimer = null;
      room.joinRef = null;
      if (room.phase !== "left") room.phase = "offline";
    }
    for (const out of this.outbox.values()) {
      out.ref = null;
      if (out.retryTimer !== null) clearTimeout(out.retryTimer);
      out.retryTimer = null;
    }
    // A membership ends with its connection: a leave in progress is done.
    for (const waiters of this.leaving.values()) for (const done of waiters) done();
    this.leaving.clear();
  }

  private disarmWatchdog(): void {
    if (this.watchdog !== null) clearTimeout(this.watchdog);
    this.watchdog = null;
  }

  /** Sets the heartbeat's timer for the next thing due on the current connection. */
  private armWatchdog(): void {
    this.disarmWatchdog();
    if (this.heartbeat === null || this.ws === null) return;
    const [idle, timeout] = this.heartbeat;
    let due: number;
    if (!this.ready) due = this.openedAt + idle + timeout;
    else if (this.pingSentAt === null) due = this.lastHeard + idle;
    else due = this.pingSentAt + timeout;
    this.watchdog = setTimeout(() => this.onWatchdog(), Math.max(0, due - Date.now()));
  }

  /** The heartbeat's timer: send `ping` after a silence, give up after an unanswered one. */
  private onWatchdog(): void {
    this.watchdog = null;
    const ws = this.ws;
    if (ws === null || this.stoppedBy !== null || this.heartbeat === null) return;
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
      } catch {
        // already closing
      }
      return;
    }
    if (this.ready && this.pingSentAt === null && now - this.lastHeard >= idle) {
      if (this.sendFrame({ type: "ping", ref: PING_REF })) this.pingSentAt = now;
    }
    this.armWatchdog();
  }

  /** The browser is back online: a reconnect waiting for its backoff goes now. */
  private readonly onOnline = (): void => {
    if (this.reconnectTimer === null || this.stoppedBy !== null) return;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.attempt = 0;
    void this.open();
  };

  private scheduleReconnect(change: StateChange): void {
    if (this.stoppedBy !== null || this.reconnectTimer !== null) return;
    const delay = backoffDelay(this.attempt, this.minMs, this.maxMs);
    this.attempt += 1;
    this.setState(this.everConnected ? "reconnecting" : "connecting", { ...change, retryInMs: delay });
    this.reconnectTimer = setTimeout(() => void this.open(), delay);
  }

  /** Stops for good: closes the connection, rejects everything pending with `err`. */
  private stop(err: RoomcastError, closeCode: number | null): void {
    this.stoppedBy = err;
    this.generation += 1;
    onlineEvents()?.removeEventListener("online", this.onOnline);
    this.disarmWatchdog();
    if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    const ws = this.ws;
    if (ws !== null) {
      this.ws = null;
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try {
        ws.close(closeCode ?? 1000);
      } catch {
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
    for (const out of this.outbox.values()) out.reject(err);
    this.outbox.clear();
    const waiters = this.connectWaiters;
    this.connectWaiters = [];
    for (const w of waiters) w.reject(err);
    const change: StateChange = { error: err };
    if (err.closeCode !== undefined) change.closeCode = err.closeCode;
    this.setState("closed", change);
  }

  // ---------- frames from the server ----------

  private onFrame(data: string): void {
    const f: ServerFrame | null = parseServerFrame(data);
    if (f === null) return;
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
        if (f.ref !== undefined) this.refs.delete(f.ref);
        this.emit("refreshed", { exp: f.exp });
        break;
    }
  }

  private onWelcome(node: string): void {
    this.ready = true;
    this.attempt = 0;
    this.nodeId = node;
    this.everConnected = true;
    this.armWatchdog();
    this.forbiddenMessage = null;
    // The joins go first, so that `connected` listeners find every room `joining`.
    for (const room of this.rooms.values()) {
      if (room.phase !== "left") this.sendJoin(room);
    }
    this.setState("connected", { node });
    const waiters = this.connectWaiters;
    this.connectWaiters = [];
    for (const w of waiters) w.resolve();
  }

  private sendJoin(room: Room): void {
    if (room.phase === "joining" || room.phase === "joined" || room.phase === "left") return;
    const frame: Record<string, unknown> = { type: "join", room: room.name };
    // jwt mode ignores `name` (the token names the user); anonymous mode needs it.
    const name = room.options.displayName ?? this.opts.name;
    if (name !== undefined) frame.name = name;
    if (room.options.token !== undefined) frame.token = room.options.token;
    // A rejoin resumes after the cursor; a first join may ask for the recent history.
    room.since = room.cursor;
    if (room.since !== null) frame.since = room.since;
    else if ((room.options.history ?? 0) > 0) frame.history = room.options.history;
    const ref = this.nextRef("j", { kind: "join", room });
    frame.ref = ref;
    if (this.sendFrame(frame)) {
      room.phase = "joining";
      room.joinRef = ref;
    } else {
      this.refs.delete(ref);
    }
  }

  private onJoined(f: JoinedFrame): void {
    const room = this.rooms.get(f.room);
    if (room === undefined || room.phase !== "joining") return;
    if (room.joinRef !== null) this.refs.delete(room.joinRef);
    room.onJoined(f);
    // What was not acked before the reconnect goes again, with the same idem keys.
    this.flushOutbox(room, true);
  }

  private onAck(f: AckFrame): void {
    if (f.ref === null) return;
    const info = this.refs.get(f.ref);
    if (info === undefined || info.kind !== "send") return;
    this.refs.delete(f.ref);
    const out = this.outbox.get(info.idem);
    if (out === undefined || out.ref !== f.ref) return;
    this.outbox.delete(out.idem);
    out.resolve({ id: f.id, duplicate: f.duplicate });
    // Publishing works: sends waiting for a retry can go now.
    this.flushOutbox(out.room, true);
  }

  private onMembers(f: MembersFrame): void {
    if (f.ref === undefined) return;
    const info = this.refs.get(f.ref);
    if (info === undefined || info.kind !== "members") return;
    this.refs.delete(f.ref);
    info.resolve(f);
  }

  private onLeft(f: LeftFrame): void {
    if (f.reason === undefined) {
      // The answer to our `leave` (the room was taken out of `rooms` when it was sent).
      const waiters = this.leaving.get(f.room);
      const done = waiters?.shift();
      if (waiters !== undefined && waiters.length === 0) this.leaving.delete(f.room);
      done?.();
      return;
    }
    const room = this.rooms.get(f.room);
    if (room === undefined) return;
    this.endRoom(room, f.reason, new RoomcastError("not_joined", `removed from ${room.name}`));
  }

  /** The membership ended for good (removed, or a rejoin refused): drop the room and its sends. */
  private endRoom(room: Room, reason: string, err: RoomcastError): void {
    if (this.rooms.get(room.name) === room) this.rooms.delete(room.name);
    for (const out of [...this.outbox.values()]) {
      if (out.room !== room) continue;
      this.outbox.delete(out.idem);
      if (out.retryTimer !== null) clearTimeout(out.retryTimer);
      out.reject(err);
    }
    room.onLeft(reason);
  }

  private onError(f: ErrorFrame): void {
    const code = toErrorCode(f.code);
    const err = new RoomcastError(code, f.message);
    if (f.ref === TYPING_REF || f.ref === PING_REF) return; // a notice, or a gateway without `ping`: it answered
    if (f.ref === AUTH_REF || (code === "unauthorized" && !this.ready)) {
      // The token was refused (bad, expired): get another, or stop. A gateway in anonymous
      // mode answers `bad_request` (no token is needed): the application may want to know.
      if (code === "unauthorized") this.onTokenRefused(err);
      else this.emit("error", err, "auth");
      return;
    }
    const info = f.ref !== undefined ? this.refs.get(f.ref) : undefined;
    if (info === undefined || f.ref === undefined) {
      // Not an answer to anything in flight: before close 4003 the server says why.
      if (code === "forbidden") this.forbiddenMessage = f.message;
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
        if (waiters !== undefined && waiters.length === 0) this.leaving.delete(info.room);
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

  private onTokenRefused(err: RoomcastError): void {
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
    } catch {
      // already closing
    }
  }

  private onJoinError(room: Room, code: string, err: RoomcastError): void {
    if (this.rooms.get(room.name) !== room || room.phase !== "joining") return;
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
      } else {
        this.endRoom(room, code, err);
      }
      return;
    }
    // `draining`: the connection closes soon; the rejoin follows the reconnect. Otherwise
    // (`unavailable`, `rate_limited`, `internal`) try again in a while.
    if (code === "draining") return;
    room.retryTimer = setTimeout(() => {
      room.retryTimer = null;
      if (this.ready && this.rooms.get(room.name) === room) this.sendJoin(room);
    }, JOIN_RETRY_MS * (0.5 + Math.random()));
  }

  private onSendError(idem: string, ref: string, code: string, err: RoomcastError): void {
    const out = this.outbox.get(idem);
    if (out === undefined || out.ref !== ref) return;
    out.ref = null;
    if (RETRY_SEND_ERRORS.has(code)) {
      // Nothing was published (or, after `unavailable`, maybe it was: the same idem key
      // makes the retry harmless).
      const base = Math.min(SEND_RETRY_MAX_MS, SEND_RETRY_MIN_MS * 2 ** Math.min(out.failures, 16));
      out.failures += 1;
      out.retryTimer = setTimeout(() => {
        out.retryTimer = null;
        if (this.outbox.get(out.idem) === out) this.flushOutbox(out.room, false);
      }, base * (0.5 + Math.random()));
      return;
    }
    // `draining`: the replica is going away; the send goes again (same key) once the room
    // is rejoined after the reconnect.
    if (code === "draining") return;
    this.outbox.delete(out.idem);
    out.reject(err);
  }

  private async onExpiring(): Promise<void> {
    const get = this.opts.getToken;
    if (get === undefined || this.refreshing) return;
    const gen = this.generation;
    this.refreshing = true;
    try {
      const token = await get();
      if (gen !== this.generation || this.stoppedBy !== null) return;
      // Reconnects authenticate with the new token too.
      this.token = token;
      this.tokenRefused = false;
      this.sendFrame({ type: "refresh", token, ref: this.nextRef("r", { kind: "refresh" }) });
    } catch (err) {
      this.emit("error", new RoomcastError("unauthorized", `getToken failed: ${String(err)}`), "getToken");
    } finally {
      if (gen === this.generation) this.refreshing = false;
    }
  }

  // ---------- what rooms ask for ----------

  /** Sends every unacked message of `room` not in flight, in order (`now`: also those waiting for a retry). */
  private flushOutbox(room: Room, now: boolean): void {
    if (room.phase !== "joined" || !this.ready) return;
    for (const out of this.outbox.values()) {
      if (out.room !== room || out.ref !== null) continue;
      if (out.retryTimer !== null) {
        if (!now) continue;
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

  private roomSend(room: Room, text: string): Promise<SendResult> {
    if (this.stoppedBy !== null) return Promise.reject(this.stoppedBy);
    if (room.phase === "left" || this.rooms.get(room.name) !== room) {
      return Promise.reject(new RoomcastError("not_joined", `not joined to ${room.name}`));
    }
    return new Promise<SendResult>((resolve, reject) => {
      const out: Outgoing = {
        idem: idemKey(), room, text, ref: null, firstSentAt: null, retryTimer: null, failures: 0, resolve, reject,
      };
      this.outbox.set(out.idem, out);
      // Anything older still waiting for a retry goes first, so the order is kept.
      this.flushOutbox(room, true);
    });
  }

  private roomTyping(room: Room): void {
    if (room.phase !== "joined") return;
    const now = Date.now();
    if (now - room.typingSentAt < TYPING_INTERVAL_MS) return;
    if (this.sendFrame({ type: "typing", room: room.name, ref: TYPING_REF })) room.typingSentAt = now;
  }

  private roomLeave(room: Room): Promise<void> {
    if (room.phase === "left" || this.rooms.get(room.name) !== room) return Promise.resolve();
    const wasJoined = room.phase === "joined" || room.phase === "joining";
    this.endRoom(room, "left", new RoomcastError("not_joined", `left ${room.name}`));
    const first = room.firstJoin;
    room.firstJoin = null;
    first?.reject(new RoomcastError("not_joined", `left ${room.name} before it was joined`));
    if (!wasJoined || !this.ready) return Promise.resolve();
    return new Promise<void>((resolve) => {
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

  private roomMembers(room: Room, after: string | undefined): Promise<MembersPage> {
    if (this.stoppedBy !== null) return Promise.reject(this.stoppedBy);
    if (room.phase !== "joined" || !this.ready) {
      return Promise.reject(new RoomcastError("not_joined", `${room.name} is not joined right now`));
    }
    return new Promise<MembersPage>((resolve, reject) => {
      const onPage = (f: MembersFrame): void => {
        const page: MembersPage = { members: f.members, memberCount: f.member_count };
        if (f.next !== undefined) page.next = f.next;
        resolve(page);
      };
      const ref = this.nextRef("m", { kind: "members", room, resolve: onPage, reject });
      const frame: Record<string, unknown> = { type: "members", room: room.name, ref };
      if (after !== undefined) frame.after = after;
      if (!this.sendFrame(frame)) {
        this.refs.delete(ref);
        reject(new RoomcastError("unavailable", "not connected"));
      }
    });
  }
}

/** Where a browser says it is back online (`online` events), if anywhere. */
function onlineEvents(): Pick<EventTarget, "addEventListener" | "removeEventListener"> | null {
  const g = globalThis as { addEventListener?: unknown; removeEventListener?: unknown };
  const isTarget = typeof g.addEventListener === "function" && typeof g.removeEventListener === "function";
  return isTarget ? (globalThis as unknown as EventTarget) : null;
}

export type { User };
