// The wire protocol as the client sees it (docs/protocol.md in the roomcast repository):
// the frames the server sends, checked field by field as they are parsed (the network is
// not trusted to send what the types say), message-id ordering, and random idem keys.

/** A user as the server shows them: in jwt mode with the token's `sub` as `id`. */
export interface User {
  name: string;
  color: string;
  id?: string;
}

export interface WelcomeFrame { type: "welcome"; node: string; conn: string }
export interface JoinedFrame {
  type: "joined";
  room: string;
  you: User;
  members: User[];
  member_count: number;
  members_next?: string;
  offset: string;
  recovered?: boolean;
}
/** A chat message (as the application gets it, and as the `message` frame carries it). */
export interface Message {
  room: string;
  /** The message id, `"<ms>-<seq>"`: ordered within its room. */
  id: string;
  from: User;
  text: string;
  /** Publish time, Unix milliseconds. */
  ts: number;
  /** Part of a join's history replay or of a resume's catch-up, not live. */
  replay: boolean;
}
export interface MessageFrame extends Message {
  type: "message";
}
export interface PresenceFrame {
  type: "presence";
  room: string;
  event: "join" | "leave";
  user: User;
  member_count?: number;
}
export interface SummaryFrame {
  type: "presence";
  room: string;
  event: "summary";
  member_count: number;
  joins: number;
  leaves: number;
}
export interface MembersFrame {
  type: "members";
  room: string;
  members: User[];
  member_count: number;
  next?: string;
  ref?: string;
}
export interface AckFrame { type: "ack"; ref: string | null; id: string; duplicate: boolean }
export interface LeftFrame { type: "left"; room: string; reason?: string }
export interface TypingFrame { type: "typing"; room: string; user: User }
export interface ErrorFrame { type: "error"; code: string; message: string; ref?: string }
export interface ExpiringFrame { type: "expiring"; in_ms: number }
export interface RefreshedFrame { type: "refreshed"; exp: number; ref?: string }

export type ServerFrame =
  | WelcomeFrame
  | JoinedFrame
  | MessageFrame
  | PresenceFrame
  | SummaryFrame
  | MembersFrame
  | AckFrame
  | LeftFrame
  | TypingFrame
  | ErrorFrame
  | ExpiringFrame
  | RefreshedFrame;

type Obj = Record<string, unknown>;

const isObj = (v: unknown): v is Obj => typeof v === "object" && v !== null && !Array.isArray(v);
const str = (v: unknown): string | undefined => (typeof v === "string" ? v : undefined);
const num = (v: unknown): number | undefined => (typeof v === "number" && Number.isFinite(v) ? v : undefined);

function user(v: unknown): User {
  const o = isObj(v) ? v : {};
  const u: User = { name: str(o.name) ?? "?", color: str(o.color) ?? "" };
  const id = str(o.id);
  if (id !== undefined) u.id = id;
  return u;
}

function users(v: unknown): User[] {
  return Array.isArray(v) ? v.map(user) : [];
}

/** Parses one text frame from the server; `null` for anything malformed or unknown. */
export function parseServerFrame(text: string): ServerFrame | null {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return null;
  }
  if (!isObj(v)) return null;
  const room = str(v.room);
  const ref = str(v.ref);
  switch (v.type) {
    case "welcome":
      return { type: "welcome", node: str(v.node) ?? "", conn: str(v.conn) ?? "" };
    case "joined": {
      const offset = str(v.offset);
      if (room === undefined || offset === undefined) return null;
      const members = users(v.members);
      const f: JoinedFrame = {
        type: "joined",
        room,
        you: user(v.you),
        members,
        member_count: num(v.member_count) ?? members.length,
        offset,
      };
      const next = str(v.members_next);
      if (next !== undefined) f.members_next = next;
      if (typeof v.recovered === "boolean") f.recovered = v.recovered;
      return f;
    }
    case "message": {
      const id = str(v.id);
      if (room === undefined || id === undefined || parseId(id) === null) return null;
      return {
        type: "message",
        room,
        id,
        from: user(v.from),
        text: str(v.text) ?? "",
        ts: num(v.ts) ?? 0,
        replay: v.replay === true,
      };
    }
    case "presence": {
      if (room === undefined) return null;
      if (v.event === "summary") {
        return {
          type: "presence",
          room,
          event: "summary",
          member_count: num(v.member_count) ?? 0,
          joins: num(v.joins) ?? 0,
          leaves: num(v.leaves) ?? 0,
        };
      }
      const event = v.event;
      if (event !== "join" && event !== "leave") return null;
      const f: PresenceFrame = { type: "presence", room, event, user: user(v.user) };
      const count = num(v.member_count);
      if (count !== undefined) f.member_count = count;
      return f;
    }
    case "members": {
      if (room === undefined) return null;
      const members = users(v.members);
      const f: MembersFrame = { type: "members", room, members, member_count: num(v.member_count) ?? members.length };
      const next = str(v.next);
      if (next !== undefined) f.next = next;
      if (ref !== undefined) f.ref = ref;
      return f;
    }
    case "ack": {
      const id = str(v.id);
      if (id === undefined) return null;
      return { type: "ack", ref: ref ?? null, id, duplicate: v.duplicate === true };
    }
    case "left": {
      if (room === undefined) return null;
      const f: LeftFrame = { type: "left", room };
      const reason = str(v.reason);
      if (reason !== undefined) f.reason = reason;
      return f;
    }
    case "typing":
      if (room === undefined) return null;
      return { type: "typing", room, user: user(v.user) };
    case "error": {
      const f: ErrorFrame = { type: "error", code: str(v.code) ?? "internal", message: str(v.message) ?? "" };
      if (ref !== undefined) f.ref = ref;
      return f;
    }
    case "expiring":
      return { type: "expiring", in_ms: num(v.in_ms) ?? 0 };
    case "refreshed": {
      const f: RefreshedFrame = { type: "refreshed", exp: num(v.exp) ?? 0 };
      if (ref !== undefined) f.ref = ref;
      return f;
    }
    default:
      return null;
  }
}

/** The two numbers of a message id `"<ms>-<seq>"`, or null when it is not one. */
export function parseId(id: string): [bigint, bigint] | null {
  const m = /^(\d{1,20})-(\d{1,20})$/.exec(id);
  if (m === null || m[1] === undefined || m[2] === undefined) return null;
  return [BigInt(m[1]), BigInt(m[2])];
}

/**
 * Orders message ids of one room: negative when `a` is older than `b`, 0 when equal,
 * positive when newer (`ms` first, then `seq`; docs/protocol.md, "Identifiers").
 */
export function compareIds(a: string, b: string): number {
  const pa = parseId(a);
  const pb = parseId(b);
  if (pa === null || pb === null) return a === b ? 0 : a < b ? -1 : 1;
  if (pa[0] !== pb[0]) return pa[0] < pb[0] ? -1 : 1;
  if (pa[1] !== pb[1]) return pa[1] < pb[1] ? -1 : 1;
  return 0;
}

/** A fresh random idempotency key (a UUID: 36 bytes, under the 64 the protocol allows). */
export function idemKey(): string {
  const c = globalThis.crypto as Crypto | undefined;
  if (c !== undefined && typeof c.randomUUID === "function") return c.randomUUID();
  const bytes = new Uint8Array(16);
  if (c !== undefined && typeof c.getRandomValues === "function") c.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i += 1) bytes[i] = Math.floor(Math.random() * 256);
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** The `exp` claim (Unix seconds) of a JWT, without checking it; null when unreadable. */
export function tokenExp(token: string): number | null {
  const part = token.split(".")[1];
  if (part === undefined) return null;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const payload: unknown = JSON.parse(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)));
    return isObj(payload) && typeof payload.exp === "number" ? payload.exp : null;
  } catch {
    return null;
  }
}
