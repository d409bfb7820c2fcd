// roomcast-client: the public surface of the library (everything an application imports).

export {
  RoomcastClient,
  backoffDelay,
  DEFAULT_BACKOFF_MAX_MS,
  DEFAULT_BACKOFF_MIN_MS,
  DEFAULT_HEARTBEAT_IDLE_MS,
  DEFAULT_HEARTBEAT_TIMEOUT_MS,
  DEFAULT_IDEMPOTENCY_TTL_MS,
} from "./client.js";
export type {
  BackoffOptions,
  ClientEvents,
  ClientOptions,
  ConnectionState,
  ErrorSource,
  ExpiringEvent,
  HeartbeatOptions,
  RefreshedEvent,
  StateChange,
  WebSocketConstructor,
  WebSocketLike,
} from "./client.js";
export { Room } from "./room.js";
export type {
  GapEvent,
  JoinedEvent,
  JoinOptions,
  LeftEvent,
  MembersPage,
  Message,
  PresenceEvent,
  RoomEvents,
  RoomState,
  SendResult,
  TypingEvent,
} from "./room.js";
export { RoomcastError } from "./errors.js";
export type { ClientErrorCode, ErrorCode, ProtocolErrorCode } from "./errors.js";
export { compareIds } from "./protocol.js";
export type { User } from "./protocol.js";
