"""A network camera that hangs: a loopback TCP server that accepts every connection
and never sends a byte, as a camera whose firmware has locked up does."""

from __future__ import annotations

import socket
import threading


class HungCamera:
    def __init__(self, scheme: str = "rtsp"):
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self._held: list[socket.socket] = []
        self._closed = threading.Event()
        port = self._server.getsockname()[1]
        self.url = f"{scheme}://127.0.0.1:{port}/stream"
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def connections(self) -> int:
        return len(self._held)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self._held.append(conn)  # held open, never answered

    def close(self) -> None:
        self._closed.set()
        self._server.close()
        for conn in self._held:
            conn.close()

    def __enter__(self) -> HungCamera:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()
