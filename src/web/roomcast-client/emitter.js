// A tiny typed event emitter shared by RoomcastClient and Room.
//
// No dependency on Node's EventEmitter or the DOM's EventTarget, so the same code runs in
// browsers and in Node. A listener that throws does not break the client's state machine:
// the error is rethrown from a microtask (it shows up as an uncaught error, as it would
// from a DOM event listener) and the other listeners still run.
export class Emitter {
    listeners = {};
    /** Adds a listener; returns a function that removes it. */
    on(event, listener) {
        let set = this.listeners[event];
        if (set === undefined) {
            set = new Set();
            this.listeners[event] = set;
        }
        set.add(listener);
        return () => this.off(event, listener);
    }
    /** Adds a listener that runs once. */
    once(event, listener) {
        const off = this.on(event, (...args) => {
            off();
            listener(...args);
        });
        return off;
    }
    /** Removes a listener added with `on`. */
    off(event, listener) {
        this.listeners[event]?.delete(listener);
    }
    /** Calls every listener of `event` in the order they were added. */
    emit(event, ...args) {
        const set = this.listeners[event];
        if (set === undefined)
            return;
        for (const listener of [...set]) {
            try {
                listener(...args);
            }
            catch (err) {
                queueMicrotask(() => {
                    throw err;
                });
            }
        }
    }
}
