// One joined room: the application's handle (`send`, `typing`, `leave`, members, events)
// and the room's resume state (its cursor, the id of the last message delivered).
//
// Delivery rule: a message is handed to the application only when its id is newer than the
// cursor, and the cursor then moves to it. Ids of a room increase in the order every member
// receives them, and a rejoin asks for everything after the cursor (`since`), so every
// message reaches the application once, in room order, across reconnects. The one
// exception is the history of a fresh join (`history`): those messages are older than the
// `offset` the cursor starts at, and are delivered in their own order before live ones.
//
// The connection work (frames, refs, the outbox) is the client's; a Room calls it through
// the RoomHost interface.

import { Emitter } from "./emitter.js";
import type { RoomcastError } from "./errors.js";
import { compareIds } from "./protocol.js";
import type { JoinedFrame, Message, MessageFrame, PresenceFrame, SummaryFrame, User } from "./protocol.js";

/** Options of `client.join`. */
export interface JoinOptions {
  /** Display name in anonymous mode (default: the client's `name`); ignored in jwt mode. */
  displayName?: string;
  /** On the first join, replay the room's last N messages (`replay: true`) before live ones. */
  history?: number;
  /** jwt mode: a room token granting this one room (sent with every join of the room). */
  token?: string;
}

export type { Message };

/** Someone joined or left (`user`), or a large room's summary. */
export type PresenceEvent =
  | { event: "join" | "leave"; user: User; memberCount: number }
  | { event: "summary"; memberCount: number; joins: number; leaves: number };

/** Another member is typing. Hide it after about 3 s without another, or when their message arrives. */
export interface TypingEvent {
  user: User;
}

/**
 * A resume could not recover every message (`recovered: false`): messages after `since`
 * up to some point were lost (history trimmed, or the log lost). What is left follows as
 * `message` events; `offset` is the newest message id in the room at the rejoin.
 */
export interface GapEvent {
  since: string;
  offset: string;
}

/**
 * The membership ended: `reason` is `"left"` after `room.leave()`, `"removed"` when the
 * server API removed you, or the error code of a rejoin the server refused after a
 * reconnect (e.g. `"forbidden"`).
 */
export interface LeftEvent {
  reason: string;
}

/**
 * The server confirmed a join (`joined`): the first join (`resumed: false`), or a rejoin
 * after a reconnect (`resumed: true`; a `gap` event follows when it could not recover every
 * message). It carries the member list as `joined` gave it: its first page (`members`, at
 * most `presence.members_in_join`), the room's count, and where the next page starts
 * (`membersNext`, null when `members` is the whole list; see `room.fetchMembersPage`).
 * Presence events after it tell every change since.
 */
export interface JoinedEvent {
  resumed: boolean;
  you: User;
  members: User[];
  memberCount: number;
  membersNext: string | null;
}

export interface RoomEvents {
  joined: [JoinedEvent];
  message: [Message];
  presence: [PresenceEvent];
  typing: [TypingEvent];
  gap: [GapEvent];
  left: [LeftEvent];
}

/** What a send resolves to: the message id; `duplicate` when a retry found it published. */
export interface SendResult {
  id: string;
  duplicate: boolean;
}

/** One page of a room's member list. */
export interface MembersPage {
  members: User[];
  memberCount: number;
  /** Where the next page starts; absent on the last page. */
  next?: string;
}

/** @internal The client's side of a room. */
export interface RoomHost {
  send(room: Room, text: string): Promise<SendResult>;
  typing(room: Room): void;
  leave(room: Room): Promise<void>;
  members(room: Room, after: string | undefined): Promise<MembersPage>;
}

/**
 * Where a room stands on the current connection: `joining` (a join is in flight),
 * `joined`, `offline` (not connected, or waiting to retry a join; it is joined again when
 * it can be), `left` (for good: after `leave()`, a removal or a refused rejoin).
 */
export type RoomState = "offline" | "joining" | "joined" | "left";

export const TYPING_INTERVAL_MS = 1000;

export class Room extends Emitter<RoomEvents> {
  /** The room's name. */
  readonly name: string;
  /**
   * Members as known: the first page of `joined` (at most `presence.members_in_join`),
   * kept current by presence notices. In a large room (`membersStale`) only `memberCount`
   * stays current; `fetchMembers()` reads the whole list again.
   */
  members: User[] = [];
  /** The room's member count (one per user in jwt mode, per connection in anonymous mode). */
  memberCount = 0;
  /** True once a presence `summary` came: `members` is no longer kept current. */
  membersStale = false;
  /**
   * Where the member list goes on after `members`: the `members_next` of the last `joined`
   * (pass it to `fetchMembersPage`), or null when `members` was the whole list.
   */
  membersNext: string | null = null;
  /** Who the server says you are in this room. */
  you: User | null = null;

  /** @internal */ readonly options: JoinOptions;
  /** @internal */ phase: RoomState = "offline";
  /** @internal The id of the last message delivered (or `offset` of the first join). */
  cursor: string | null = null;
  /** @internal The `since` of the join in flight (null: a fresh join). */
  since: string | null = null;
  /** @internal A fresh join's history replay is still arriving. */
  inHistory = false;
  /** @internal The last history message delivered (history ids are below `cursor`). */
  historyCursor: string | null = null;
  /** @internal The `ref` of the join in flight. */
  joinRef: string | null = null;
  /** @internal A join retry timer (after `unavailable`). */
  retryTimer: ReturnType<typeof setTimeout> | null = null;
  /** @internal Settles the promise of `client.join` on the first `joined` or a refusal. */
  firstJoin: { resolve: (room: Room) => void; reject: (err: RoomcastError) => void } | null = null;
  /** @internal */ typingSentAt = 0;
  private readonly host: RoomHost;
  /**
   * Events held after the first `joined` until the next task: the join's promise settles
   * in a microtask, and the frames after `joined` (a history replay) may be parsed in the
   * same task; holding them lets `const room = await client.join(..); room.on(..)` see
   * every message.
   */
  private held: Array<() => void> | null = null;

  /** @internal Rooms are made by `client.join`. */
  constructor(host: RoomHost, name: string, options: JoinOptions) {
    super();
    this.host = host;
    this.name = name;
    this.options = options;
  }

  /** Where the room stands on the current connection (see `RoomState`). */
  get state(): RoomState {
    return this.phase;
  }

  /** The id of the last message delivered in this room (where a resume starts). */
  get lastMessageId(): string | null {
    return this.cursor;
  }

  /**
   * Sends `text`. Resolves with the message id once the server acknowledges it. The send
   * carries a random idempotency key; if the connection breaks first, it is sent again
   * with the same key after the room is rejoined, so it is published once. Rejects with a
   * RoomcastError carrying the protocol's code when the server refuses it (`too_large`,
   * `rejected`, `forbidden`, ...), with `not_joined` when the room is left first, and with
   * `closed` when the client is closed first.
   */
  send(text: string): Promise<SendResult> {
    return this.host.send(this, text);
  }

  /** Tells the others you are typing; throttled to one frame a second, dropped while not joined. */
  typing(): void {
    this.host.typing(this);
  }

  /** Leaves the room; resolves once the server confirms (or at once when not connected). */
  leave(): Promise<void> {
    return this.host.leave(this);
  }

  /**
   * Reads one page of the member list (a `members` request): from the start, or from
   * `after` (`membersNext`, or the `next` of the previous page). `members`, `memberCount`
   * and `membersNext` stay as they are: merging pages is the caller's. Rejects with
   * `not_joined` while the room is not joined, `unavailable` when the connection closes
   * first, or the server's code (e.g. `bad_request` for a cursor it does not take).
   */
  fetchMembersPage(after?: string): Promise<MembersPage> {
    return this.host.members(this, after);
  }

  /** Reads the whole member list, page by page (`members` requests), and keeps it in `members`. */
  async fetchMembers(): Promise<User[]> {
    const all: User[] = [];
    let after: string | undefined;
    let count = 0;
    for (;;) {
      const page = await this.fetchMembersPage(after);
      all.push(...page.members);
      count = page.memberCount;
      if (page.next === undefined) break;
      after = page.next;
    }
    this.members = all;
    this.memberCount = count;
    this.membersStale = false;
    this.membersNext = null;
    return all;
  }

  /** @internal `joined`: the first page of members; a resume's `recovered` flag. */
  onJoined(f: JoinedFrame): void {
    this.you = f.you;
    this.members = f.members;
    this.memberCount = f.member_count;
    this.membersStale = false;
    this.membersNext = f.members_next ?? null;
    this.phase = "joined";
    this.joinRef = null;
    const first = this.firstJoin;
    this.firstJoin = null;
    // The first join's events are held (see `held`) until listeners can be added.
    const held: Array<() => void> | null = first !== null ? [] : null;
    if (held !== null) this.held = held;
    const resumed = this.since !== null;
    this.deliver("joined", {
      resumed, you: f.you, members: f.members, memberCount: f.member_count, membersNext: this.membersNext,
    });
    if (this.since === null) {
      // A fresh join: live messages are those after `offset`; a history replay, older
      // than it, comes first.
      this.cursor = f.offset;
      this.inHistory = (this.options.history ?? 0) > 0;
      this.historyCursor = null;
    } else {
      this.inHistory = false;
      if (f.recovered === false) this.deliver("gap", { since: this.since, offset: f.offset });
    }
    if (first !== null && held !== null) {
      setTimeout(() => {
        if (this.held === held) this.held = null;
        for (const deliver of held) deliver();
      }, 0);
      first.resolve(this);
    }
  }

  /** Emits now, or after the events held since the first `joined` (see `held`). */
  private deliver<K extends keyof RoomEvents>(event: K, ...args: RoomEvents[K]): void {
    if (this.held !== null) this.held.push(() => this.emit(event, ...args));
    else this.emit(event, ...args);
  }

  /** @internal One `message`: delivered when newer than the cursor (see the module comment). */
  onMessage(f: MessageFrame): void {
    if (this.phase !== "joined") return;
    const msg: Message = { room: this.name, id: f.id, from: f.from, text: f.text, ts: f.ts, replay: f.replay };
    if (f.replay && this.inHistory) {
      if (this.historyCursor !== null && compareIds(f.id, this.historyCursor) <= 0) return;
      if (this.cursor !== null && compareIds(f.id, this.cursor) > 0) {
        // Newer than `offset`: not history after all; the normal rule applies.
        this.inHistory = false;
      } else {
        this.historyCursor = f.id;
        this.deliver("message", msg);
        return;
      }
    }
    if (!f.replay) this.inHistory = false;
    if (this.cursor !== null && compareIds(f.id, this.cursor) <= 0) return;
    this.cursor = f.id;
    this.deliver("message", msg);
  }

  /** @internal A presence notice or summary. */
  onPresence(f: PresenceFrame | SummaryFrame): void {
    if (this.phase !== "joined") return;
    if (f.event === "summary") {
      this.memberCount = f.member_count;
      this.membersStale = true;
      this.deliver("presence", { event: "summary", memberCount: f.member_count, joins: f.joins, leaves: f.leaves });
      return;
    }
    if (f.event === "join") {
      this.members = [...this.members, f.user];
      this.memberCount = f.member_count ?? this.memberCount + 1;
    } else {
      const i = this.members.findIndex((m) => sameUser(m, f.user));
      if (i >= 0) this.members = [...this.members.slice(0, i), ...this.members.slice(i + 1)];
      this.memberCount = f.member_count ?? Math.max(0, this.memberCount - 1);
    }
    this.deliver("presence", { event: f.event, user: f.user, memberCount: this.memberCount });
  }

  /** @internal A `typing` notice. */
  onTyping(u: User): void {
    if (this.phase === "joined") this.deliver("typing", { user: u });
  }

  /** @internal The membership ended for good. */
  onLeft(reason: string): void {
    this.phase = "left";
    if (this.retryTimer !== null) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.deliver("left", { reason });
  }
}

/** The same member: by `id` in jwt mode, by name (and color) in anonymous mode. */
function sameUser(a: User, b: User): boolean {
  if (a.id !== undefined || b.id !== undefined) return a.id === b.id;
  return a.name === b.name && a.color === b.color;
}
