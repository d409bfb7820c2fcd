// roomcast-client: the public surface of the library (everything an application imports).
export { RoomcastClient, backoffDelay, DEFAULT_BACKOFF_MAX_MS, DEFAULT_BACKOFF_MIN_MS, DEFAULT_HEARTBEAT_IDLE_MS, DEFAULT_HEARTBEAT_TIMEOUT_MS, DEFAULT_IDEMPOTENCY_TTL_MS, } from "./client.js";
export { Room } from "./room.js";
export { RoomcastError } from "./errors.js";
export { compareIds } from "./protocol.js";
