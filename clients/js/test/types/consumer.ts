// Type-checked (never run) by package.test.mjs against the built declarations in dist/:
// how an application written in TypeScript uses the library. Lines marked
// `@ts-expect-error` must fail to compile, so the types are not merely `any`.

import { RoomcastClient, RoomcastError } from "../../dist/index.js";
import type { ConnectionState, Message, PresenceEvent, Room, SendResult, User } from "../../dist/index.js";

export async function chat(url: string): Promise<void> {
  const client = new RoomcastClient(url, {
    getToken: async () => "jwt",
    backoff: { minMs: 250, maxMs: 5_000 },
  });
  client.on("state", (state: ConnectionState, change) => {
    const code: number | undefined = change.closeCode;
    void code;
    void state;
  });
  await client.connect();
  const room: Room = await client.join("general", { history: 20 });
  room.on("message", (m: Message) => {
    const who: User = m.from;
    const text: string = m.text;
    void who;
    void text;
  });
  room.on("presence", (p: PresenceEvent) => {
    if (p.event === "summary") {
      const joins: number = p.joins;
      void joins;
    } else {
      const name: string = p.user.name;
      void name;
    }
  });
  room.on("gap", ({ since, offset }) => void [since, offset]);
  try {
    const sent: SendResult = await room.send("hello");
    const id: string = sent.id;
    void id;
  } catch (e) {
    if (e instanceof RoomcastError && e.code === "too_large") return;
  }
  // @ts-expect-error: text only
  await room.send(42);
  // @ts-expect-error: no such event
  room.on("mesage", () => {});
  // @ts-expect-error: not an error code
  if (new RoomcastError("closed").code === "closd") return;
  // @ts-expect-error: the state is read-only
  client.state = "connected";
  await room.leave();
  client.close();
}
