"""Runs the captioning app (``server.app``) under uvicorn, stopped gracefully by SIGINT / SIGTERM, with the read
deadline uvicorn lacks: a client gets ``read_timeout_s`` in all to send its request headers (docs/api.md, "Slow
or silent clients"); a stalled body is the app's to time out.
"""

from __future__ import annotations

import contextlib
import socket

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from avlformer.serve.server import ServeState, app

SPARE_CONNECTIONS = 32        # connections beyond the captioning queue (the page, clip downloads, health checks)
GRACEFUL_SHUTDOWN_S = 30      # on a stop, how long requests being answered may take before they are cut off


class _DeadlineH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline on the client whenever no request is in the app's hands."""

    read_timeout_s: float = 0.0   # set by a subclass per server (``CaptionServer``)

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._deadline = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete:
            self._disarm()
        else:
            self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        self._disarm()  # uvicorn's keep-alive timeout takes over until the client sends again
        super().on_response_complete()

    def _arm(self) -> None:
        if self._deadline is None and not self.transport.is_closing():
            self._deadline = self.loop.call_later(self.read_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return
        with contextlib.suppress(h11.LocalProtocolError):
            self.conn.send(h11.ConnectionClosed())
        self.transport.close()


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServeState):
        super().__init__(config)
        self.state = state

    async def shutdown(self, sockets=None) -> None:
        self.state.queue.close()  # before uvicorn waits for the requests in flight: waiting ones end at once
        await super().shutdown(sockets)


class CaptionServer:
    """The server of ``state`` on ``host:port`` (0: any free port), bound at once (OSError if it cannot be)."""

    def __init__(self, state: ServeState, host: str = "127.0.0.1", port: int = 7860):
        self.state = state
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.create_server((host, port), family=family)
        protocol = type("DeadlineH11", (_DeadlineH11,), {"read_timeout_s": state.read_timeout_s})
        config = uvicorn.Config(app(state), http=protocol, lifespan="off", log_config=None,
                                limit_concurrency=state.queue_size + SPARE_CONNECTIONS,
                                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, server_header=False)
        self._server = _Server(config, state)

    @property
    def server_address(self) -> tuple:
        return self.socket.getsockname()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    def serve_forever(self) -> None:
        self._server.run(sockets=[self.socket])

    def shutdown(self) -> None:
        self._server.should_exit = True

    def server_close(self) -> None:
        self.socket.close()
        self.state.close()
