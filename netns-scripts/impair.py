#!/usr/bin/env python3
"""impair.py LISTEN_PORT LOCAL_PEER_PORT REMOTE_HOST REMOTE_PORT FAULT...: a UDP relay that
impairs a WireGuard path where the kernel has no tc netem (CONFIG_NET_SCH_NETEM unset).

The local daemon sends to 127.0.0.1:LISTEN_PORT; the relay forwards to REMOTE_HOST:REMOTE_PORT
from a socket of its own, and sends what comes back to 127.0.0.1:LOCAL_PEER_PORT. Both
directions get the same faults, netem's words: `loss P%`, `delay Nms`, `reorder P%` (that
share of datagrams is held back behind the next one), `duplicate P%`. Runs until killed."""
import heapq, random, select, socket, sys, time

listen_port, local_port, remote_host, remote_port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
words = sys.argv[5:]
loss = delay = reorder = duplicate = 0.0
i = 0
while i < len(words):
    w, v = words[i], words[i + 1] if i + 1 < len(words) else "0"
    if w == "loss": loss = float(v.rstrip("%")) / 100
    elif w == "delay": delay = float(v.rstrip("ms")) / 1000
    elif w == "reorder": reorder = float(v.rstrip("%")) / 100
    elif w == "duplicate": duplicate = float(v.rstrip("%")) / 100
    i += 2
rng = random.Random(1)
local = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
local.bind(("127.0.0.1", listen_port))
remote = socket.socket(socket.AF_INET6 if ":" in remote_host else socket.AF_INET, socket.SOCK_DGRAM)
for s in (local, remote):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.setblocking(False)
to_remote, to_local = (remote_host, remote_port), ("127.0.0.1", local_port)
queue, seq, held = [], 0, {}

def emit(sock, data, addr):
    global seq
    if rng.random() < loss:
        return
    copies = 2 if rng.random() < duplicate else 1
    for _ in range(copies):
        if reorder and rng.random() < reorder and addr not in held:
            held[addr] = (sock, data)  # goes out behind the next datagram this way
            continue
        seq += 1
        heapq.heappush(queue, (time.monotonic() + delay, seq, sock, data, addr))
        if addr in held:
            s2, d2 = held.pop(addr)
            seq += 1
            heapq.heappush(queue, (time.monotonic() + delay, seq, s2, d2, addr))

while True:
    timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else 0.05
    readable, _, _ = select.select([local, remote], [], [], timeout)
    for s in readable:
        for _ in range(256):
            try:
                data, _src = s.recvfrom(65535)
            except BlockingIOError:
                break
            if s is local:
                emit(remote, data, to_remote)
            else:
                emit(local, data, to_local)
    now = time.monotonic()
    while queue and queue[0][0] <= now:
        _, _, s, data, addr = heapq.heappop(queue)
        try:
            s.sendto(data, addr)
        except OSError:
            pass
    # A held datagram with nothing behind it is released after a while, never lost.
    for addr in list(held):
        if not queue:
            s2, d2 = held.pop(addr)
            seq += 1
            heapq.heappush(queue, (now + delay + 0.005, seq, s2, d2, addr))
