"""The one kind of failure the server answers on purpose: a status, ``{"error": message}`` and maybe headers."""

from __future__ import annotations

from http import HTTPStatus


class RequestError(Exception):
    """A request the server answers with ``status`` and ``{"error": message}``; ``close``: the connection is
    closed after the answer (the rest of the request body is not read)."""

    def __init__(self, status: HTTPStatus, message: str, *, headers: dict[str, str] | None = None,
                 close: bool = False):
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})
        if close:
            self.headers["Connection"] = "close"
