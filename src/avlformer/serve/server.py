"""The captioning server: the page, ``POST /api/caption`` and the clips of a ``--videos`` folder.

A standard-library ``ThreadingHTTPServer``: requests are received in parallel, but every use of the model goes
through one lock, so captioning requests queue instead of running concurrently on one model. Uploads are parsed
as they arrive (``python-multipart``, the ``[serve]`` extra) straight into a per-request folder inside the
server's private temporary folder (mode 0700), which is deleted when the request is answered; the upload's own
file name is never used as a path. A body larger than the upload limit is refused from its Content-Length before
any of it is read. Every failure is answered with a JSON ``{"error": "..."}`` and a 4xx status; the server keeps
running.

Routes::

    GET  /                      the page (``?video=NAME``: a clip of --videos, captioned and drawn in)
    GET  /videos/NAME           a clip of the --videos folder (what the page's picker and ?upload= use)
    GET  /api/videos            the clips of the --videos folder, as JSON
    GET  /api/caption?video=NAME        caption a clip of the --videos folder
    POST /api/caption           multipart/form-data with the file field ``video``
                                -> {"caption", "confidence", "audio_source", "warnings"}
                                (``?details=1`` adds "frames", "spectrogram" and "attention_mask" data URIs)
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from avlformer.data import media
from avlformer.data.clip_ids import is_video_name
from avlformer.inference.captioner import Captioner
from avlformer.serve import DEFAULT_MAX_UPLOAD_MB, page, render

log = logging.getLogger(__name__)

READ_CHUNK = 1 << 16


class RequestError(Exception):
    """A request the server answers with ``status`` and ``{"error": message}``."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class ServeState:
    captioner: Captioner
    model_name: str
    videos_dir: Path | None = None
    max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 1e6)
    lock: threading.Lock = field(default_factory=threading.Lock)
    temp_root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="avlformer-serve-")))
    _mask_uri: str | None = None
    _mask_done: bool = False

    def video_names(self) -> list[str]:
        if self.videos_dir is None:
            return []
        return sorted(p.name for p in self.videos_dir.iterdir() if is_video_name(p) and p.is_file())

    def folder_video(self, name: str) -> Path:
        """A clip of --videos by its plain file name (nothing outside the folder is reachable)."""
        if self.videos_dir is None:
            raise RequestError(HTTPStatus.NOT_FOUND, "this server was started without --videos")
        path = self.videos_dir / name
        if Path(name).name != name or not is_video_name(name) or not path.is_file():
            raise RequestError(HTTPStatus.NOT_FOUND, f"{name}: no such clip in the videos folder")
        return path

    def attention_mask_uri(self) -> str | None:
        """The learned mask does not depend on the input: drawn once (under the model lock)."""
        if not self._mask_done:
            model = self.captioner.loaded.model
            image = render.attention_mask(model.av_attention_mask(), model.config.num_video_tokens)
            self._mask_uri = render.png_uri(image) if image is not None else None
            self._mask_done = True
        return self._mask_uri

    def caption_file(self, path: Path, shown_as: str, details: bool) -> dict:
        """Caption one file; a file that is not a decodable video is a 422 naming ``shown_as``."""
        # Decoding the file needs no model: only the model's own work is queued behind the lock.
        try:
            clip = self.captioner.prepare(path)
        except media.MediaError as error:
            raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, f"{shown_as}: {error.reason}") from None
        except (ValueError, OSError, RuntimeError) as error:
            message = str(error).replace(str(path), shown_as)
            raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, f"{shown_as}: not a decodable video "
                                                                f"({message})") from None
        with self.lock:
            result = self.captioner.caption_inputs([clip])[0]
            mask = self.attention_mask_uri() if details else None
        answer = {"caption": result.caption, "confidence": result.confidence, "audio_source": result.audio_source,
                  "warnings": [w.replace(str(path), shown_as) for w in result.warnings]}
        if details:
            answer["frames"] = [render.jpeg_uri(f) for f in render.display_frames(clip.frames)]
            answer["spectrogram"] = render.png_uri(render.spectrogram(clip.audio, self.captioner.spec.sample_rate))
            answer["attention_mask"] = mask
        return answer

    def close(self) -> None:
        shutil.rmtree(self.temp_root, ignore_errors=True)


class CaptionHandler(BaseHTTPRequestHandler):
    server: "CaptionServer"
    protocol_version = "HTTP/1.1"

    # ------------------------------------------------------------------------------------------------ routing
    def do_GET(self) -> None:
        self._answer(self._get)

    def do_POST(self) -> None:
        self._answer(self._post)

    def _answer(self, route) -> None:
        try:
            route(urlsplit(self.path))
        except RequestError as error:
            self._send_json({"error": str(error)}, error.status)
        except Exception as error:  # the server must outlive any one request
            log.exception("request %s failed", self.path)
            self._send_json({"error": f"internal error: {type(error).__name__}: {error}"},
                            HTTPStatus.INTERNAL_SERVER_ERROR)

    def _get(self, url) -> None:
        state, query = self.server.state, parse_qs(url.query)
        if url.path == "/":
            chosen = query.get("video", [None])[0]
            result = None
            if chosen:
                try:
                    result = state.caption_file(state.folder_video(chosen), chosen, details=True)
                except RequestError as error:
                    result = {"error": str(error)}
            body = page.page(state.model_name, state.video_names(), state.max_upload_bytes / 1e6, result, chosen)
            self._send(body.encode("utf-8"), "text/html; charset=utf-8")
        elif url.path == "/api/videos":
            self._send_json({"videos": state.video_names()})
        elif url.path == "/api/caption":
            name = query.get("video", [None])[0]
            if not name:
                raise RequestError(HTTPStatus.BAD_REQUEST, "GET /api/caption needs ?video=NAME (a clip of the "
                                                           "videos folder); to upload, POST the file as `video`")
            self._send_json(state.caption_file(state.folder_video(name), name, _details(query)))
        elif url.path.startswith("/videos/"):
            path = state.folder_video(unquote(url.path.removeprefix("/videos/")))
            self._send(path.read_bytes(), "application/octet-stream")
        else:
            raise RequestError(HTTPStatus.NOT_FOUND, f"{url.path}: no such page")

    def _post(self, url) -> None:
        if url.path != "/api/caption":
            self._discard_body()
            raise RequestError(HTTPStatus.NOT_FOUND, f"POST {url.path}: no such endpoint (use /api/caption)")
        state = self.server.state
        folder = Path(tempfile.mkdtemp(dir=state.temp_root))
        try:
            upload, shown_as = self._receive_upload(folder)
            answer = state.caption_file(upload, shown_as, _details(parse_qs(url.query)))
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # before answering: a client may look right away
        self._send_json(answer)

    # ------------------------------------------------------------------------------------------------ uploads
    def _content_length(self) -> int:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise RequestError(HTTPStatus.LENGTH_REQUIRED, "the request needs a Content-Length header") from None
        if length < 0:
            raise RequestError(HTTPStatus.BAD_REQUEST, "negative Content-Length")
        return length

    def _discard_body(self) -> None:
        try:
            length = self._content_length()
        except RequestError:
            length = 0
        if 0 < length <= self.server.state.max_upload_bytes:
            self.rfile.read(length)
        elif length:
            self.close_connection = True

    def _receive_upload(self, folder: Path) -> tuple[Path, str]:
        """The ``video`` field of a multipart body, written into ``folder``: (its path, its name for messages)."""
        from python_multipart import FormParser
        from python_multipart.exceptions import FormParserError
        from python_multipart.multipart import parse_options_header

        limit = self.server.state.max_upload_bytes
        length = self._content_length()
        if length > limit:
            self.close_connection = True  # the body is never read
            raise RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                               f"upload of {length} bytes is over this server's limit of {limit} bytes "
                               f"({limit / 1e6:g} MB, --max-upload-mb)")
        content_type, options = parse_options_header(self.headers.get("Content-Type", ""))
        if content_type != b"multipart/form-data" or b"boundary" not in options:
            self._discard_body()
            raise RequestError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                               "send the video as multipart/form-data with the file field `video`")
        files = []
        parser = FormParser("multipart/form-data", lambda _field: None, files.append,
                            boundary=options[b"boundary"],
                            config={"UPLOAD_DIR": str(folder), "MAX_MEMORY_FILE_SIZE": 0,
                                    "UPLOAD_DELETE_TMP": False, "MAX_BODY_SIZE": limit})
        remaining = length
        try:
            while remaining > 0:
                chunk = self.rfile.read(min(READ_CHUNK, remaining))
                if not chunk:
                    raise RequestError(HTTPStatus.BAD_REQUEST, "the upload ended before its Content-Length")
                remaining -= len(chunk)
                parser.write(chunk)
            parser.finalize()
        except FormParserError as error:
            self.close_connection = True
            raise RequestError(HTTPStatus.BAD_REQUEST, f"malformed multipart body: {error}") from None
        video = next((f for f in files if f.field_name == b"video"), None)
        if video is None:
            raise RequestError(HTTPStatus.BAD_REQUEST, "no file field `video` in the upload")
        shown_as = (video.file_name or b"upload").decode("utf-8", "replace").replace("\\", "/").rsplit("/", 1)[-1]
        video.file_object.flush()
        if video.in_memory or video.size == 0:  # flushed to disk at its first byte, so only an empty one stays
            raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, f"{shown_as}: empty file")
        path = Path(video.actual_file_name.decode())
        video.file_object.close()
        return path, shown_as or "upload"

    # ------------------------------------------------------------------------------------------------ replies
    def _send(self, body: bytes, content_type: str, status: HTTPStatus = HTTPStatus.OK) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, payload: dict, status: HTTPStatus = HTTPStatus.OK) -> None:
        self._send(json.dumps(payload).encode("utf-8"), "application/json", status)

    def log_message(self, format: str, *args) -> None:
        log.info("%s %s", self.address_string(), format % args)


def _details(query: dict) -> bool:
    return query.get("details", ["0"])[0] not in ("0", "", "false")


class CaptionServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: ServeState, host: str = "127.0.0.1", port: int = 7860):
        self.state = state
        super().__init__((host, port), CaptionHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def server_close(self) -> None:
        super().server_close()
        self.state.close()
