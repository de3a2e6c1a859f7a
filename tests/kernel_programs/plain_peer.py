"""A ZeroMQ peer without the kernel's CurveZMQ key, in another container (tests/security/test_exposure.py): run
as ``python3 -c PROGRAM URL``, it prints how far it got with the kernel's port at URL."""

import sys
import time

import zmq
from zmq.utils.monitor import recv_monitor_message

ctx = zmq.Context()
s = ctx.socket(zmq.DEALER)
s.linger = 0
monitor = s.get_monitor_socket()
s.connect(sys.argv[1])
deadline, seen = time.time() + 3, set()
while time.time() < deadline:
    if monitor.poll(100):
        seen.add(recv_monitor_message(monitor)["event"])
print(
    "handshake-ok"
    if zmq.EVENT_HANDSHAKE_SUCCEEDED in seen
    else "connected-refused"
    if zmq.EVENT_CONNECTED in seen
    else "unreachable"
)
