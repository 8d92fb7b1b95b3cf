"""A TCP proxy in front of the S3 server that can take the endpoint down and cut uploads.

Clients talk to ``proxy.endpoint``; the proxy forwards bytes to the real server. Faults:

- ``down()``: the listening socket closes and every open connection is reset, so new requests
  get "connection refused", exactly what a stopped server gives; ``up()`` listens again on the
  same port (a restarted server). ``down(count=True)`` keeps listening but resets every new
  connection at once (a crashed server behind a load balancer), and counts them in
  ``refused``: proof that clients kept trying during the outage.
- ``cut_uploads_over(n)``: a connection that sends more than ``n`` bytes towards the server is
  reset; small requests (listing, GETs of shards, small JSON files) pass, a large upload such as
  a checkpoint's ``state.pt`` never completes. ``cut_uploads_over(None)`` heals it.
- ``when_sent(pattern, fault)``: runs ``fault`` (for example ``proxy.down``) the moment a client
  sends bytes containing ``pattern`` (an object key: S3 puts it in the request line), before
  those bytes reach the server. Tests use it to strike at a chosen point of a run, such as the
  first request for checkpoint 2, instead of racing the run with a timer; ``tripped`` is set
  once it has fired.

The proxy works on bytes, not HTTP, so it needs no knowledge of S3 and the client sees real
network errors.
"""

from __future__ import annotations

import socket
import struct
import threading


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.upload_limit: int | None = None
        self.resets = 0  # connections reset by an injected fault
        self.refused = 0  # connections attempted during a counted outage
        self.counting = False
        self.tripped = threading.Event()
        self._trigger: tuple[bytes, object] | None = None
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._listen()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self, count: bool = False) -> None:
        self.counting = count
        if not count:
            self._close_listener()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            _reset(conn)
        self.resets += len(conns)

    def up(self) -> None:
        self.counting = False
        if self._listener is None:
            self._listen()

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            # shutdown() first: a plain close() leaves the socket listening for as long as the
            # accept thread is blocked on it.
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()

    def cut_uploads_over(self, limit: int | None) -> None:
        self.upload_limit = limit

    def when_sent(self, pattern: bytes, fault) -> None:
        self._trigger = (pattern, fault)

    def _check_trigger(self, tail: bytes, data: bytes) -> bool:
        trigger = self._trigger
        if trigger is None or trigger[0] not in tail + data:
            return False
        self._trigger = None
        trigger[1]()
        self.tripped.set()
        return True

    def close(self) -> None:
        self.down()
        self._close_listener()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # listener closed by down()
            if self.counting:
                self.refused += 1
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._conns.update((client, server))
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        sent, tail = 0, b""
        try:
            while data := src.recv(65536):
                sent += len(data)
                # A pattern may straddle two reads: keep the end of the previous one.
                if upstream and self._check_trigger(tail, data) and src not in self._conns:
                    break  # the fault closed this connection: the request never arrives
                tail = data[-256:]
                if upstream and self.upload_limit is not None and sent > self.upload_limit:
                    self.resets += 1
                    break
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            _reset(sock)
            with self._lock:
                self._conns.discard(sock)


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a crashed peer or a dropped network would."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
