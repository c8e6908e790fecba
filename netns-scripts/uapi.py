#!/usr/bin/env python3
"""uapi.py SOCKET REQUEST: sends one raw UAPI request (\\n escapes allowed) and prints the reply."""
import socket
import sys

sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(5)
sock.connect(sys.argv[1])
sock.sendall(sys.argv[2].encode().decode("unicode_escape").encode())
reply = b""
while not reply.endswith(b"\n\n"):
    chunk = sock.recv(65536)
    if not chunk:
        break
    reply += chunk
sys.stdout.write(reply.decode())
