#!/usr/bin/env python3
"""notify-listen.py PATH SECONDS: a stand-in for systemd's notify socket. Prints each message
received on the datagram socket PATH, one line each (fields joined by spaces), for SECONDS."""
import os
import socket
import sys
import time

path, secs = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
s.settimeout(0.1)
end = time.monotonic() + secs
while time.monotonic() < end:
    try:
        msg = s.recv(4096).decode(errors="replace")
    except socket.timeout:
        continue
    print("%.3f %s" % (time.monotonic(), " ".join(msg.split("\n"))), flush=True)
os.unlink(path)
