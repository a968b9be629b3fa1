"""`avlformer serve`: a local captioning page and a JSON endpoint for one model; needs the ``[serve]`` extra.
See docs/api.md, "The captioning page"."""

from http import HTTPStatus

DEFAULT_MAX_UPLOAD_MB = 100.0   # largest accepted upload unless --max-upload-mb says otherwise
DEFAULT_QUEUE_SIZE = 32         # captioning requests accepted at once (running and waiting); more get a 503
DEFAULT_READ_TIMEOUT_S = 30.0   # a client silent this long mid-request (or this slow with its headers) is cut off


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
