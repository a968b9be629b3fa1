"""Uploads, parsed as they stream in into a fresh file of a per-request folder inside the server's private
temporary folder (never under the upload's own name, never inside a checkpoint). A body over the limit is refused
from its Content-Length; a client silent mid-body gets a 408.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from http import HTTPStatus
from pathlib import Path

from starlette.requests import Request

from avlformer.output_paths import enclosing_checkpoint
from avlformer.serve import RequestError


def private_upload_root() -> Path:
    base = Path(tempfile.gettempdir()).resolve()
    if (checkpoint := enclosing_checkpoint(base)) is not None:
        raise ValueError(f"uploads would be written inside the checkpoint folder {checkpoint} (the temporary "
                         f"folder is {base}); set TMPDIR to another folder")
    return Path(tempfile.mkdtemp(prefix="avlformer-serve-", dir=base))


def content_length(request: Request) -> int:
    try:
        length = int(request.headers.get("content-length", ""))
    except ValueError:
        raise RequestError(HTTPStatus.LENGTH_REQUIRED, "the request needs a Content-Length header",
                           close=True) from None
    if length < 0:
        raise RequestError(HTTPStatus.BAD_REQUEST, "negative Content-Length", close=True)
    return length


async def _chunks(request: Request, read_timeout: float):
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), read_timeout)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise RequestError(HTTPStatus.REQUEST_TIMEOUT, f"the request body stopped arriving (nothing for "
                                                           f"{read_timeout:g} s)", close=True) from None
        if chunk:
            yield chunk


async def discard_body(request: Request, limit: int, read_timeout: float) -> dict[str, str]:
    """Read and drop a body, so the answer reaches a client still sending it; returns the headers to answer with
    (a body too large to read closes the connection instead)."""
    try:
        length = content_length(request)
    except RequestError as error:
        return error.headers
    if length > limit:
        return {"Connection": "close"}
    async for _ in _chunks(request, read_timeout):
        pass
    return {}


async def receive(request: Request, folder: Path, limit: int, read_timeout: float) -> tuple[Path, str]:
    """The ``video`` field of a multipart body, written into ``folder``: (its path, its name for messages).
    Raises ClientDisconnect when the client goes away mid-body."""
    from python_multipart import FormParser
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import parse_options_header

    length = content_length(request)
    if length > limit:
        raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                           f"upload of {length} bytes is over this server's limit of {limit} bytes "
                           f"({limit / 1e6:g} MB, --max-upload-mb)", close=True)
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in options:
        headers = await discard_body(request, limit, read_timeout)
        raise RequestError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                           "send the video as multipart/form-data with the file field `video`", headers=headers)
    files = []
    parser = FormParser("multipart/form-data", lambda _field: None, files.append,
                        boundary=options[b"boundary"],
                        config={"UPLOAD_DIR": str(folder), "MAX_MEMORY_FILE_SIZE": 0,
                                "UPLOAD_DELETE_TMP": False, "MAX_BODY_SIZE": limit})
    try:
        # Small writes into the page cache: cheaper on the event loop than a thread hop per chunk.
        async for chunk in _chunks(request, read_timeout):
            parser.write(chunk)
        parser.finalize()
    except FormParserError as error:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"malformed multipart body: {error}", close=True) from None
    finally:
        for file in files:
            if not file.in_memory:
                file.file_object.close()
    video = next((f for f in files if f.field_name == b"video"), None)
    if video is None:
        raise RequestError(HTTPStatus.BAD_REQUEST, "no file field `video` in the upload")
    shown_as = (video.file_name or b"upload").decode("utf-8", "replace").replace("\\", "/").rsplit("/", 1)[-1]
    if video.in_memory or video.size == 0:  # flushed to disk at its first byte, so only an empty one stays
        raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, f"{shown_as}: empty file")
    return Path(os.fsdecode(video.actual_file_name)), shown_as or "upload"

