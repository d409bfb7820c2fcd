// Typed errors: every rejection and every `error` event of the library is a RoomcastError
// whose `code` is one of the protocol's error codes (docs/protocol.md, "Error codes"), or
// `closed` when the application closed the client before the answer came.
export class RoomcastError extends Error {
    /** The protocol's error code (or `closed`). */
    code;
    /** The WebSocket close code, when the error comes from the connection closing. */
    closeCode;
    constructor(code, message, closeCode) {
        super(message !== undefined && message !== "" ? `${code}: ${message}` : code);
        this.name = "RoomcastError";
        this.code = code;
        if (closeCode !== undefined)
            this.closeCode = closeCode;
    }
}
/** Join errors after which sending the same join again cannot succeed. */
export const FATAL_JOIN_ERRORS = new Set([
    "bad_request",
    "unknown_type",
    "invalid_room",
    "invalid_name",
    "too_many_rooms",
    "forbidden",
    "unauthorized",
]);
/** Send errors after which the same send (same `idem` key) is tried again later. */
export const RETRY_SEND_ERRORS = new Set(["unavailable", "rate_limited"]);
/** Narrows an error code from the wire (unknown codes become `internal`). */
export function toErrorCode(code) {
    const known = new Set([
        "bad_request", "unknown_type", "invalid_room", "invalid_name", "not_joined",
        "already_joined", "too_many_rooms", "too_large", "rate_limited", "unavailable",
        "draining", "internal", "unauthorized", "forbidden", "rejected",
    ]);
    return typeof code === "string" && known.has(code) ? code : "internal";
}
