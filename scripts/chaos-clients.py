#!/usr/bin/env python3
"""Special clients of scripts/chaos (standard library only, a minimal RFC 6455 client):

  chaos-clients.py probe-join   HOST PORT ROOM CURSOR_FILE
      joins ROOM, sends one message, waits for it to come back and writes its id (the
      resume cursor) to CURSOR_FILE.
  chaos-clients.py probe-resume HOST PORT ROOM CURSOR_FILE
      joins ROOM with since = the cursor and prints {"recovered": ..., "delivered": ...}:
      the `recovered` of the `joined`, and whether a message sent after it came back.
  chaos-clients.py slow  HOST PORT --rooms R1,R2 --seconds S
      a slow consumer: joins the rooms, then reads 1 KiB per second through a small receive
      buffer; when the server closes it (slow consumer, 1008), it connects again. Prints
      {"connections": n, "closed_by_server": n} at the end.
  chaos-clients.py flood HOST PORT --rooms R1,R2 --seconds S [--rate 200] [--size 4000]
      a flood sender: joins the rooms and sends --rate messages/s of --size bytes (past the
      gateway's per-connection limit), reading and discarding what comes back; when closed
      (rate limit strikes, 1008) it connects again after --reconnect-delay (1 s). Prints
      its counts at the end.
The flood and slow texts carry no bench header: the load generator counts them as foreign
messages (no latency sample), but its loss ledger expects them like any message.
"""
import argparse
import base64
import json
import os
import socket
import struct
import sys
import threading
import time


class Ws:
    def __init__(self, host, port, rcvbuf=None, timeout=10):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(timeout)
        s.connect((host, port))
        self.s = s
        self.buf = b""
        self.lock = threading.Lock()
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall((f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buf:
            chunk = s.recv(4096)
            if not chunk:
                raise EOFError("closed during the handshake")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise EOFError(f"no upgrade: {head[:200]!r}")

    def send(self, opcode, payload):
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            hdr = bytes([0x80 | opcode, 0x80 | n])
        elif n < 65536:
            hdr = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack("!H", n)
        else:
            hdr = bytes([0x80 | opcode, 0x80 | 127]) + struct.pack("!Q", n)
        # XOR with the mask, fast enough for a few hundred frames a second.
        m = (mask * (n // 4 + 1))[:n]
        body = (int.from_bytes(payload, "big") ^ int.from_bytes(m, "big")).to_bytes(n, "big") if n else b""
        with self.lock:
            self.s.sendall(hdr + mask + body)

    def send_json(self, obj):
        self.send(0x1, json.dumps(obj).encode())

    def recv_exact(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError("closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self):
        b0, b1 = self.recv_exact(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self.recv_exact(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self.recv_exact(8))[0]
        return b0 & 0x0F, self.recv_exact(n)

    def next_json(self):
        while True:
            op, data = self.recv()
            if op == 0x1:
                return json.loads(data)
            if op == 0x9:
                self.send(0xA, data)
            elif op == 0x8:
                raise EOFError("closed by the server")

    def close(self):
        try:
            self.send(0x8, struct.pack("!H", 1000))
        except Exception:
            pass
        self.s.close()

    def peer_closed(self):
        """The server has closed its side (TCP state CLOSE_WAIT or gone)."""
        try:
            info = self.s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
            return info[0] != 1  # 1 = TCP_ESTABLISHED
        except OSError:
            return True


def join(ws, room, name, since=None):
    frame = {"type": "join", "room": room, "name": name, "ref": "j"}
    if since:
        frame["since"] = since
    ws.send_json(frame)
    while True:
        f = ws.next_json()
        if f.get("type") == "joined" and f.get("room") == room:
            return f
        if f.get("type") == "error" and f.get("ref") == "j":
            raise RuntimeError(f"join refused: {f}")


def send_and_wait(ws, room, text, deadline):
    ws.send_json({"type": "send", "room": room, "text": text, "ref": "p"})
    ack = None
    while time.time() < deadline:
        f = ws.next_json()
        if f.get("type") == "ack" and f.get("ref") == "p":
            ack = f.get("id")
        elif f.get("type") == "error" and f.get("ref") == "p":
            return None, f.get("code")
        elif f.get("type") == "message" and f.get("text") == text:
            return f.get("id"), None
    return ack, "timeout"


def probe(a):
    deadline = time.time() + a.timeout
    while True:
        try:
            ws = Ws(a.host, a.port)
            ws.s.settimeout(max(1.0, deadline - time.time()))
            if a.mode == "probe-join":
                join(ws, a.room, "chaos-probe")
                mid, err = send_and_wait(ws, a.room, f"probe {time.time()}", deadline)
                if not mid:
                    raise RuntimeError(f"probe message not delivered ({err})")
                with open(a.cursor_file, "w") as f:
                    f.write(mid)
                print(json.dumps({"cursor": mid}))
            else:
                with open(a.cursor_file) as f:
                    cursor = f.read().strip()
                joined = join(ws, a.room, "chaos-probe", since=cursor)
                mid, err = send_and_wait(ws, a.room, f"probe after {time.time()}", deadline)
                print(json.dumps({"cursor": cursor, "recovered": joined.get("recovered"),
                                  "delivered": bool(mid), "error": err}))
            ws.close()
            return 0
        except Exception as e:
            # The gateway may still be recovering (unavailable): retry until the timeout.
            if time.time() >= deadline:
                print(json.dumps({"error": str(e)}))
                return 1
            time.sleep(0.5)


def slow(a):
    stats = {"connections": 0, "closed_by_server": 0, "errors": 0}
    end = time.time() + a.seconds
    while time.time() < end:
        try:
            ws = Ws(a.host, a.port, rcvbuf=4096)
            stats["connections"] += 1
            for r in a.rooms.split(","):
                join(ws, r, f"chaos-slow-{stats['connections']}")
            ws.s.setblocking(False)
            while time.time() < end:
                try:
                    if not ws.s.recv(1024):
                        break
                except BlockingIOError:
                    pass
                if ws.peer_closed():
                    stats["closed_by_server"] += 1
                    break
                time.sleep(1.0)
            ws.s.close()
        except Exception:
            stats["errors"] += 1
            time.sleep(0.5)
    print(json.dumps(stats))
    return 0


def flood(a):
    stats = {"connections": 0, "sent": 0, "acked": 0, "rate_limited": 0, "other_errors": 0,
             "closed": 0}
    end = time.time() + a.seconds
    rooms = a.rooms.split(",")
    text = "flood " + "f" * max(0, a.size - 6)
    while time.time() < end:
        try:
            ws = Ws(a.host, a.port)
            stats["connections"] += 1
            for r in rooms:
                join(ws, r, f"chaos-flood-{stats['connections']}")
            closed = threading.Event()

            def reader():
                try:
                    while True:
                        f = ws.next_json()
                        t = f.get("type")
                        if t == "ack":
                            stats["acked"] += 1
                        elif t == "error":
                            key = "rate_limited" if f.get("code") == "rate_limited" else "other_errors"
                            stats[key] += 1
                except Exception:
                    pass
                closed.set()

            ws.s.settimeout(None)
            th = threading.Thread(target=reader, daemon=True)
            th.start()
            i = 0
            t0 = time.time()
            while time.time() < end and not closed.is_set():
                due = int((time.time() - t0) * a.rate)
                while i < due and not closed.is_set():
                    ws.send_json({"type": "send", "room": rooms[i % len(rooms)], "text": text,
                                  "ref": str(i)})
                    i += 1
                    stats["sent"] += 1
                time.sleep(0.005)
            if closed.is_set():
                stats["closed"] += 1
            ws.s.close()
            th.join(timeout=2)
        except Exception:
            pass
        # Closed for flooding (or failed): back after a pause, like a client's backoff;
        # without it the per-connection limit would be beaten by reconnecting.
        time.sleep(a.reconnect_delay)
    print(json.dumps(stats))
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["probe-join", "probe-resume", "slow", "flood"])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("room", nargs="?")
    ap.add_argument("cursor_file", nargs="?")
    ap.add_argument("--rooms")
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--size", type=int, default=4000)
    ap.add_argument("--timeout", type=float, default=30)
    ap.add_argument("--reconnect-delay", type=float, default=1.0)
    a = ap.parse_args()
    if a.mode.startswith("probe"):
        if not a.room or not a.cursor_file:
            sys.exit("probe modes need ROOM and CURSOR_FILE")
        return probe(a)
    if not a.rooms:
        sys.exit("--rooms is required")
    return slow(a) if a.mode == "slow" else flood(a)


if __name__ == "__main__":
    sys.exit(main())
