#!/usr/bin/env python3
"""TCP proxy of scripts/chaos `partition`: one replica reaches Redis through it, so the
scenario can cut that replica off from Redis while Redis and the other replicas go on.

  chaos-proxy.py LISTEN_PORT TARGET_PORT [--mode close|blackhole]

Signals: SIGUSR1 cuts, SIGUSR2 heals, SIGTERM stops.
  close      (default) on cut, every proxied connection is closed at once and new ones are
             accepted and closed straight away (a firewall answering with resets): the
             replica sees its Redis connections drop and cannot reconnect until the heal.
  blackhole  on cut, nothing is forwarded any more in either direction and new connections
             are held without being forwarded (packets dropped): the replica sees Redis stop
             answering; on heal, what was held flows again.
Each cut and heal is logged on stdout with its Unix time in ms.
"""
import asyncio
import signal
import sys
import time


class Proxy:
    def __init__(self, target, mode):
        self.target = target
        self.mode = mode
        self.cut = False
        self.healed = asyncio.Event()
        self.healed.set()
        self.conns = set()

    def log(self, what):
        print(f"{what} {int(time.time() * 1000)} connections={len(self.conns)}", flush=True)

    def do_cut(self):
        self.cut = True
        self.healed.clear()
        if self.mode == "close":
            for w in list(self.conns):
                w.transport.abort()
        self.log("cut")

    def do_heal(self):
        self.cut = False
        self.healed.set()
        self.log("heal")

    async def pump(self, reader, writer):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if self.mode == "blackhole" and self.cut:
                    await self.healed.wait()
                writer.write(data)
                await writer.drain()
        except Exception:
            pass
        finally:
            writer.transport.abort()

    async def handle(self, creader, cwriter):
        if self.cut:
            if self.mode == "close":
                cwriter.transport.abort()
                return
            await self.healed.wait()
        try:
            sreader, swriter = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            cwriter.transport.abort()
            return
        self.conns.update((cwriter, swriter))
        try:
            await asyncio.gather(self.pump(creader, swriter), self.pump(sreader, cwriter))
        except asyncio.CancelledError:
            pass
        finally:
            self.conns.discard(cwriter)
            self.conns.discard(swriter)


async def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    listen, target = int(sys.argv[1]), int(sys.argv[2])
    mode = "close"
    if "--mode" in sys.argv:
        mode = sys.argv[sys.argv.index("--mode") + 1]
    if mode not in ("close", "blackhole"):
        sys.exit("--mode must be close or blackhole")
    p = Proxy(target, mode)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, p.do_cut)
    loop.add_signal_handler(signal.SIGUSR2, p.do_heal)
    loop.add_signal_handler(signal.SIGTERM, done.set)
    loop.add_signal_handler(signal.SIGINT, done.set)
    server = await asyncio.start_server(p.handle, "127.0.0.1", listen)
    p.log(f"listening 127.0.0.1:{listen} -> 127.0.0.1:{target} mode={mode}")
    await done.wait()
    server.close()
    for w in list(p.conns):
        w.transport.abort()


if __name__ == "__main__":
    asyncio.run(main())
