#!/usr/bin/env python3
"""Holds about N TCP sockets open in the current network namespace until stdin closes.

Shaped like a prefork server: the parent binds the listeners and forks workers that
inherit them; each worker makes connections to its own listeners over 127.0.0.1 and ::1
and keeps both ends (two sockets per connection). A tenth of the connections are closed
client-first and leave TIME_WAIT behind (60 s). One process may hold at most ~19k fds
(the hard RLIMIT_NOFILE on these machines is 20000, and raising it needs
CAP_SYS_RESOURCE), hence the workers.
Usage: population.py SOCKETS
"""
import os
import resource
import socket
import sys

PER_WORKER = 16000
LISTENERS_PER_WORKER = 8

target = int(sys.argv[1])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
workers = max(1, -(-target // PER_WORKER))
plans = []
port = 9000
for w in range(workers):
    mine = []
    for _ in range(LISTENERS_PER_WORKER):
        port += 1
        family, host = (socket.AF_INET6, "::1") if port % 4 == 0 else (socket.AF_INET, "127.0.0.1")
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(4096)
        mine.append((s, family, host, port))
    share = min(PER_WORKER, target - w * PER_WORKER)
    plans.append((mine, share))


def hold(listeners, share):
    keep = []
    made, i = 0, 0
    while made < share:
        s, family, host, port = listeners[i % len(listeners)]
        i += 1
        c = socket.socket(family, socket.SOCK_STREAM)
        c.connect((host, port))
        a, _ = s.accept()
        if i % 10 == 0:
            c.close()  # client-first close: c ends in TIME_WAIT once a closes
            a.close()
            made += 1
        else:
            keep.extend((c, a))
            made += 2
    return keep


children = []
for mine, share in plans:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        kept = hold(mine, share)
        os.write(w, b"x")
        sys.stdin.read()
        os._exit(0)
    os.close(w)
    children.append((pid, r))
for pid, r in children:
    os.read(r, 1)
print(f"ready {target} sockets in {workers} workers", flush=True)
sys.stdin.read()
for pid, _ in children:
    os.kill(pid, 15)
