// A tiny typed event emitter shared by RoomcastClient and Room.
//
// No dependency on Node's EventEmitter or the DOM's EventTarget, so the same code runs in
// browsers and in Node. A listener that throws does not break the client's state machine:
// the error is rethrown from a microtask (it shows up as an uncaught error, as it would
// from a DOM event listener) and the other listeners still run.

/** Maps each event name to the tuple of arguments its listeners receive. */
export type EventMap<E> = { [K in keyof E]: unknown[] };

/** A listener for the event `K` of the map `E`. */
export type Listener<E extends EventMap<E>, K extends keyof E> = (...args: E[K]) => void;

export class Emitter<E extends EventMap<E>> {
  private readonly listeners: { [K in keyof E]?: Set<Listener<E, K>> } = {};

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof E>(event: K, listener: Listener<E, K>): () => void {
    let set = this.listeners[event];
    if (set === undefined) {
      set = new Set();
      this.listeners[event] = set;
    }
    set.add(listener);
    return () => this.off(event, listener);
  }

  /** Adds a listener that runs once. */
  once<K extends keyof E>(event: K, listener: Listener<E, K>): () => void {
    const off = this.on(event, (...args: E[K]) => {
      off();
      listener(...args);
    });
    return off;
  }

  /** Removes a listener added with `on`. */
  off<K extends keyof E>(event: K, listener: Listener<E, K>): void {
    this.listeners[event]?.delete(listener);
  }

  /** Calls every listener of `event` in the order they were added. */
  protected emit<K extends keyof E>(event: K, ...args: E[K]): void {
    const set = this.listeners[event];
    if (set === undefined) return;
    for (const listener of [...set]) {
      try {
        listener(...args);
      } catch (err) {
        queueMicrotask(() => {
          throw err;
        });
      }
    }
  }
}
