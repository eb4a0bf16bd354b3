#!/usr/bin/env python3
"""Reference plugin daemon for tend: a JSON-RPC 2.0 echo service.

The daemon contract, as tend expects it:

* tend starts the daemon with the environment variable ``SOCKET_PATH`` set to
  the path of the Unix socket it must serve. Without it the daemon cannot
  work, so it prints a message and exits with status 2.
* A socket file left at that path by a previous, crashed instance is removed
  before binding. (If something still accepts connections there, or the path
  is not a socket, the daemon leaves it alone and exits 1.)
* The daemon binds and listens on a Unix *stream* socket at ``SOCKET_PATH``.
  tend treats the daemon as ready once a connect to that socket succeeds, so
  the daemon listens only when it is able to serve. Plain connects that are
  closed again at once (health checks) are harmless.
* Each connection carries newline-delimited JSON-RPC 2.0: one request (or
  batch) per line, UTF-8, and one response line per request that has an
  ``id``. Requests without an ``id`` are notifications and get no response.
  Errors use the standard codes: -32700 parse error, -32600 invalid request,
  -32601 method not found. Many clients may be connected at once.
* On SIGTERM (what tend sends to stop a daemon) or SIGINT the daemon stops
  accepting, closes its connections, removes its socket file and exits 0.
* Logs go to stderr, one line per event; stdout stays free.

Methods served here: ``ping`` (result ``"pong"``) and ``echo`` (result: the
request's ``params``, or null when there are none).

Uses only the standard library (``selectors``, no threads, no busy loop).
Try it by hand::

    SOCKET_PATH=/tmp/x.sock ./echo_daemon.py &
    printf '{"jsonrpc":"2.0","id":1,"method":"echo","params":{"a":1}}\\n' \\
        | socat - UNIX-CONNECT:/tmp/x.sock
    kill -TERM %1
"""

import errno
import json
import os
import selectors
import signal
import socket
import stat
import sys

PROG = "echo_daemon"
READ_SIZE = 64 * 1024
# A request line longer than this is answered with a parse error and the
# connection is closed.
MAX_LINE = 16 * 1024 * 1024
# Stop reading from a client whose unsent replies exceed this (backpressure).
MAX_PENDING_OUT = 4 * 1024 * 1024

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601


def log(msg):
    print(f"{PROG}[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


def error_response(id_, code, message):
    return {"jsonrpc": "2.0", "id": id_, "error": {"code": code, "message": message}}


def valid_id(value):
    """JSON-RPC ids are strings, numbers or null (never booleans)."""
    return value is None or (
        isinstance(value, (str, int, float)) and not isinstance(value, bool)
    )


def handle_request(req):
    """Returns the response object for one request, or None for a notification."""
    if not isinstance(req, dict):
        return error_response(None, INVALID_REQUEST, "Invalid Request")
    has_id = "id" in req
    id_ = req.get("id")
    if not valid_id(id_):
        return error_response(None, INVALID_REQUEST, "Invalid Request")
    method = req.get("method")
    if (
        req.get("jsonrpc") != "2.0"
        or not isinstance(method, str)
        or ("params" in req and not isinstance(req["params"], (list, dict)))
    ):
        return error_response(id_, INVALID_REQUEST, "Invalid Request")
    if method == "ping":
        result = "pong"
    elif method == "echo":
        result = req.get("params")
    else:
        if not has_id:
            return None
        return error_response(id_, METHOD_NOT_FOUND, f"Method not found: {method}")
    if not has_id:
        return None
    return {"jsonrpc": "2.0", "id": id_, "result": result}


def handle_line(line):
    """Returns the encoded reply line (with newline) for one request line, or b''."""
    line = line.strip()
    if not line:
        return b""
    try:
        msg = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        reply = error_response(None, PARSE_ERROR, "Parse error")
    else:
        if isinstance(msg, list):
            if not msg:
                reply = error_response(None, INVALID_REQUEST, "Invalid Request")
            else:
                replies = [r for r in map(handle_request, msg) if r is not None]
                reply = replies or None
        else:
            reply = handle_request(msg)
    if reply is None:
        return b""
    return json.dumps(reply, separators=(",", ":")).encode("utf-8") + b"\n"


class Client:
    def __init__(self, sock):
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.closing = False  # close once outbuf is flushed


class Server:
    def __init__(self, path):
        self.path = path
        self.sel = selectors.DefaultSelector()
        self.clients = {}
        self.stopping = False
        self.listener = None
        self.sock_id = None  # (st_dev, st_ino) of the socket file we created

    def remove_stale_socket(self):
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            log(f"{self.path} exists and is not a socket; refusing to remove it")
            sys.exit(1)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self.path)
        except OSError:
            pass  # nobody listening: stale
        else:
            log(f"another daemon is serving {self.path}; refusing to start")
            sys.exit(1)
        finally:
            probe.close()
        log(f"removing stale socket {self.path}")
        os.unlink(self.path)

    def listen(self):
        self.remove_stale_socket()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.path)
        st = os.lstat(self.path)
        self.sock_id = (st.st_dev, st.st_ino)
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
        self.listener = sock
        self.sel.register(sock, selectors.EVENT_READ)

    def remove_socket_file(self):
        """Unlinks the socket file, unless it was replaced by someone else."""
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self.sock_id:
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    def accept(self):
        for _ in range(64):  # accept a burst, then let other clients run
            try:
                conn, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # EMFILE and friends: leave the connection queued for later.
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log(f"accept: {e}")
                    return
                raise
            conn.setblocking(False)
            client = Client(conn)
            self.clients[conn] = client
            self.sel.register(conn, selectors.EVENT_READ)

    def update_interest(self, client):
        events = 0
        if not client.closing and len(client.outbuf) < MAX_PENDING_OUT:
            events |= selectors.EVENT_READ
        if client.outbuf:
            events |= selectors.EVENT_WRITE
        if events == 0:
            self.drop(client)
        else:
            self.sel.modify(client.sock, events)

    def drop(self, client):
        self.clients.pop(client.sock, None)
        try:
            self.sel.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()

    def client_ready(self, client, mask):
        if mask & selectors.EVENT_READ:
            try:
                data = client.sock.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                self.drop(client)
                return
            if data == b"":
                # Peer finished sending: flush the remaining replies, then close.
                if client.inbuf:
                    client.outbuf += handle_line(bytes(client.inbuf))
                    client.inbuf.clear()
                client.closing = True
            elif data:
                client.inbuf += data
                self.process_lines(client)
        if mask & selectors.EVENT_WRITE or client.outbuf:
            try:
                sent = client.sock.send(client.outbuf)
                del client.outbuf[:sent]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self.drop(client)
                return
        self.update_interest(client)

    def process_lines(self, client):
        buf = client.inbuf
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            client.outbuf += handle_line(bytes(buf[start:nl]))
            start = nl + 1
        del buf[:start]
        if len(buf) > MAX_LINE:
            client.outbuf += handle_line(b"\x00")  # parse error
            buf.clear()
            client.closing = True

    def run(self):
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)

        def on_signal(signum, _frame):
            self.stopping = signal.Signals(signum).name

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        self.sel.register(wake_r, selectors.EVENT_READ)

        self.listen()
        log(f"listening on {self.path}")
        try:
            while not self.stopping:
                for key, mask in self.sel.select():
                    if key.fileobj is wake_r:
                        try:
                            while wake_r.recv(4096):
                                pass
                        except (BlockingIOError, InterruptedError):
                            pass
                    elif key.fileobj is self.listener:
                        self.accept()
                    else:
                        client = self.clients.get(key.fileobj)
                        if client is not None:
                            self.client_ready(client, mask)
                    if self.stopping:
                        break
        finally:
            self.shutdown()
        log(f"stopping on {self.stopping}; socket removed, exiting")

    def shutdown(self):
        if self.listener is not None:
            try:
                self.sel.unregister(self.listener)
            except (KeyError, ValueError):
                pass
            self.listener.close()
            self.remove_socket_file()
        for client in list(self.clients.values()):
            self.drop(client)


def main():
    path = os.environ.get("SOCKET_PATH")
    if not path:
        print(
            f"{PROG}: SOCKET_PATH is not set; this daemon must be started by tend "
            "(or with SOCKET_PATH=/path/to/socket in the environment)",
            file=sys.stderr,
        )
        return 2
    server = Server(path)
    try:
        server.run()
    except OSError as e:
        log(f"fatal: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
