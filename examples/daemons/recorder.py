"""Test daemon: appends every line it receives to the file named by $RECORD.

Listens on $SOCKET_PATH, serves each connection in its own thread, and
never answers; used by the event-delivery tests of the library and the CLI
to see exactly what tend sent, in order.
"""
import os
import socket
import threading

out = open(os.environ["RECORD"], "a", buffering=1)
lock = threading.Lock()
server = socket.socket(socket.AF_UNIX)
server.bind(os.environ["SOCKET_PATH"])
server.listen(64)


def serve(conn):
    for line in conn.makefile("r"):
        with lock:
            out.write(line)


while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
