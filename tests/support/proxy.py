"""A TCP proxy in front of a database server that a test can cut and restore.

Cutting closes every connection passing through (so pooled connections die mid-use, as
when a server goes away) and refuses new ones until :meth:`Proxy.restore`. Only loopback
addresses are used.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import sqlalchemy as sa
from sqlalchemy.engine import URL


class Proxy:
    """Forward 127.0.0.1:<port> to ``upstream``; :meth:`cut` and :meth:`restore` it."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._closed = False
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def url_for(self, url: URL) -> URL:
        """Return ``url`` aimed at this proxy instead of the server."""
        return url.set(host="127.0.0.1", port=self.port)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._open.is_set():
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, server))
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every connection through the proxy and refuse new ones."""
        self._open.clear()
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def restore(self) -> None:
        """Accept connections again."""
        self._open.set()

    def close(self) -> None:
        """Stop the proxy."""
        self._closed = True
        self.cut()
        with contextlib.suppress(OSError):
            self._listener.close()


@contextlib.contextmanager
def proxied(url: URL) -> Iterator[Proxy]:
    """Run a proxy in front of the server of ``url`` for the length of the block."""
    proxy = Proxy(url.host or "127.0.0.1", url.port or _default_port(url))
    try:
        yield proxy
    finally:
        proxy.close()


def _default_port(url: URL) -> int:
    return 3306 if url.get_backend_name() == "mysql" else 5432


__all__ = ["Proxy", "proxied", "sa"]
