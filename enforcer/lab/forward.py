"""A TCP forwarder from the root namespace's loopback into a lab namespace.

The CLI runs in the root namespace, which has no route into a lab and must not get one. So the
supervisor listens on `127.0.0.1:<port>` and, for each connection, opens the upstream socket from
inside the target namespace (a socket keeps the namespace it was created in: `kernel.in_netns`),
then copies bytes both ways. It forwards TCP only: TLS stays between the client and etcd.
"""

from __future__ import annotations

import socket
import threading

from enforcer.lab.kernel import in_netns

CONNECT_TIMEOUT = 3.0
BUFFER = 65536


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(BUFFER):
            dst.sendall(data)
    except OSError:
        pass
    finally:  # one side closed: end both (the other pump's recv returns), then close
        for sock in (dst, src):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        src.close()


class Forwarder:
    """Listen on 127.0.0.1:`port` (root namespace); connect each client to `address`:`target_port`
    from inside lab namespace `netns`."""

    def __init__(self, port: int, netns: str, address: str, target_port: int) -> None:
        self.netns, self.address, self.target_port = netns, address, target_port
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))  # raises if taken: the caller reports it
        self.listener.listen(64)
        self._thread = threading.Thread(target=self._serve, name=f"forward :{port}", daemon=True)

    def start(self) -> Forwarder:
        self._thread.start()
        return self

    def close(self) -> None:
        self.listener.close()

    def _upstream(self) -> socket.socket:
        def connect() -> socket.socket:
            return socket.create_connection((self.address, self.target_port), timeout=CONNECT_TIMEOUT)

        sock = in_netns(self.netns, connect)
        sock.settimeout(None)
        return sock

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = self._upstream()
        except Exception:  # member down or namespace gone: the client sees a closed connection
            client.close()
            return
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pump, args=(src, dst), daemon=True).start()


__all__ = ["Forwarder"]
