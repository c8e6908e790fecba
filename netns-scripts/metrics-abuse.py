#!/usr/bin/env python3
"""metrics-abuse.py HOST PORT IDLE SECONDS: what any local user can throw at a metrics
endpoint, all at once and bounded in time: IDLE idle connections (opened, then held), a
client sending one endless header line, and a slowloris client trickling its request a byte at
a time; both of the latter reconnect whenever they are cut off. Prints one JSON line."""
import json
import socket
import sys
import threading
import time

host, port, idle_n, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
end = time.monotonic() + secs
stats = {"idle_opened": 0, "idle_failed": 0, "endless_bytes": 0, "endless_cut": 0, "slowloris_cut": 0}
lock = threading.Lock()


def bump(key, n=1):
    with lock:
        stats[key] += n


def endless():
    while time.monotonic() < end:
        try:
            s = socket.create_connection((host, port), timeout=2)
            s.sendall(b"GET /metrics HTTP/1.1\r\nX-Endless: ")
            while time.monotonic() < end:
                bump("endless_bytes", s.send(b"a" * 4096))
        except OSError:
            bump("endless_cut")
            time.sleep(0.05)


def slowloris():
    while time.monotonic() < end:
        try:
            s = socket.create_connection((host, port), timeout=2)
            for b in b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"s" * 10000:
                if time.monotonic() >= end:
                    return
                s.send(bytes([b]))
                time.sleep(0.3)
        except OSError:
            bump("slowloris_cut")
            time.sleep(0.05)


threads = [threading.Thread(target=endless, daemon=True), threading.Thread(target=slowloris, daemon=True)]
for t in threads:
    t.start()
held = []
for _ in range(idle_n):
    if time.monotonic() >= end:
        break
    try:
        held.append(socket.create_connection((host, port), timeout=2))
        stats["idle_opened"] += 1
    except OSError:
        stats["idle_failed"] += 1
while time.monotonic() < end:
    time.sleep(0.1)
for s in held:
    s.close()
for t in threads:
    t.join(timeout=3)
print(json.dumps(stats), flush=True)
