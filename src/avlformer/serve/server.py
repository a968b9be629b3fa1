"""The captioning server's routes as a Starlette application (``listener`` runs it under uvicorn); the routes and
their answers are in docs/api.md ("The captioning page"). Captioning goes through the bounded queue of ``jobs``, off
the event loop; every failure is a JSON ``{"error": "..."}`` with a 4xx status (a bare 500 for a fault of the
server), and no answer names a server path.
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from avlformer.data import media
from avlformer.data.clip_ids import is_video_name
from avlformer.inference.captioner import Captioner
from avlformer.serve import (DEFAULT_MAX_UPLOAD_MB, DEFAULT_QUEUE_SIZE, DEFAULT_READ_TIMEOUT_S, RequestError, page,
                             render, uploads)
from avlformer.serve.jobs import CaptionQueue

log = logging.getLogger(__name__)

SAFE_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


@dataclass
class ServeState:
    captioner: Captioner
    model_name: str
    videos_dir: Path | None = None
    max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 1e6)
    queue_size: int = DEFAULT_QUEUE_SIZE
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    lock: threading.Lock = field(default_factory=threading.Lock)
    temp_root: Path = field(init=False)
    queue: CaptionQueue = field(init=False)

    def __post_init__(self):
        self.queue = CaptionQueue(self.queue_size)
        self.temp_root = uploads.private_upload_root()

    # ------------------------------------------------------------------------------------------- the folder
    def _folder_clips(self) -> dict[str, Path]:
        """{name: file} of the --videos folder: plain files whose real path is inside it."""
        if self.videos_dir is None:
            return {}
        root = self.videos_dir.resolve()
        clips = {}
        for entry in self.videos_dir.iterdir():
            if not is_video_name(entry.name):
                continue
            try:
                real = entry.resolve()
            except (OSError, RuntimeError):  # a link loop (RuntimeError before Python 3.13)
                continue
            if real.is_relative_to(root) and real.is_file():
                clips[entry.name] = real
        return clips

    def video_names(self) -> list[str]:
        return sorted(self._folder_clips())

    def folder_video(self, name: str) -> Path:
        """A clip of --videos by its file name, looked up in the folder's listing (no name reaches the disk)."""
        if self.videos_dir is None:
            raise RequestError(HTTPStatus.NOT_FOUND, "this server was started without --videos")
        path = self._folder_clips().get(name)
        if path is None:
            shown = name if len(name) <= 80 else name[:60] + "..."
            raise RequestError(HTTPStatus.NOT_FOUND, f"{shown}: no such clip in the videos folder")
        return path

    # -------------------------------------------------------------------------------------------- captioning
    @functools.cached_property
    def attention_mask_uri(self) -> str | None:
        """The learned mask does not depend on the input: drawn once (under the model lock)."""
        model = self.captioner.loaded.model
        image = render.attention_mask(model.av_attention_mask(), model.config.num_video_tokens)
        return render.image_uri(image) if image is not None else None

    def caption_file(self, path: Path, shown_as: str, details: bool) -> dict:
        """Caption one file (blocking: run it on a worker); an undecodable one is a 422 naming ``shown_as``."""
        # Decoding needs no model: only the model's own work is serialised behind the lock.
        try:
            clip = self.captioner.prepare(path)
        except media.MediaError as error:
            raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, f"{shown_as}: {self._hide(error.reason, path)}"
                               ) from None
        except (ValueError, OSError, RuntimeError) as error:
            raise RequestError(HTTPStatus.UNPROCESSABLE_ENTITY, f"{shown_as}: not a decodable video "
                                                                f"({self._hide(str(error), path)})") from None
        with self.lock:
            result = self.captioner.caption_inputs([clip])[0]
            mask = self.attention_mask_uri if details else None
        answer = {"caption": result.caption, "confidence": result.confidence, "audio_source": result.audio_source,
                  "warnings": [self._hide(w, path, shown_as) for w in result.warnings]}
        if details:
            # The (T, 3, H, W) uint8 model input: exactly the pixels the model normalises.
            answer["frames"] = [render.image_uri(frame.permute(1, 2, 0).numpy(), "jpeg") for frame in clip.frames.cpu()]
            answer["spectrogram"] = render.image_uri(render.spectrogram(clip.audio, self.captioner.spec.sample_rate))
            answer["attention_mask"] = mask
        return answer

    def _hide(self, text: str, path: Path, shown_as: str = "the video") -> str:
        text = text.replace(str(path), shown_as)
        for folder, name in ((self.temp_root, "upload"), (self.videos_dir, "videos")):
            if folder is not None:
                text = text.replace(str(folder.resolve()), name).replace(str(folder), name)
        return text

    async def caption(self, path: Path, shown_as: str, details: bool, cleanup=None) -> dict:
        return await self.queue.run(lambda: self.caption_file(path, shown_as, details), cleanup)

    def close(self) -> None:
        self.queue.close()
        shutil.rmtree(self.temp_root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------- routes

def _json(payload: dict, status: int = HTTPStatus.OK, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(payload, status, headers={**SAFE_HEADERS, **(headers or {})})


def _details(request: Request) -> bool:
    return request.query_params.get("details", "0") not in ("0", "", "false")


def _answering(endpoint):
    async def route(request: Request) -> Response:
        try:
            return await endpoint(request.app.state.serve, request)
        except RequestError as error:
            return _json({"error": str(error)}, error.status, error.headers)
        except ClientDisconnect:
            return Response(status_code=HTTPStatus.BAD_REQUEST)  # nobody is left to read it
        except Exception:  # the server must outlive any one request
            log.exception("%s %s failed", request.method, request.url.path)
            return _json({"error": "internal error (the server's log has the details)"},
                         HTTPStatus.INTERNAL_SERVER_ERROR)
    return route


async def _page(state: ServeState, request: Request) -> Response:
    chosen = request.query_params.get("video")
    result = None
    if chosen:
        try:
            result = await state.caption(state.folder_video(chosen), chosen, details=True)
        except RequestError as error:
            result = {"error": str(error)}
    body = page.page(state.model_name, state.video_names(), state.max_upload_bytes / 1e6, result, chosen)
    return HTMLResponse(body, headers=SAFE_HEADERS)


async def _videos(state: ServeState, request: Request) -> Response:
    return _json({"videos": state.video_names()})


async def _health(state: ServeState, request: Request) -> Response:
    return _json({"status": "ok", "queued": state.queue.accepted, "queue_size": state.queue.size})


async def _clip(state: ServeState, request: Request) -> Response:
    path = state.folder_video(request.path_params["name"])
    return FileResponse(path, media_type="application/octet-stream", headers=SAFE_HEADERS)


async def _caption_folder_clip(state: ServeState, request: Request) -> Response:
    name = request.query_params.get("video")
    if not name:
        raise RequestError(HTTPStatus.BAD_REQUEST, "GET /api/caption needs ?video=NAME (a clip of the videos "
                                                   "folder); to upload, POST the file as `video`")
    return _json(await state.caption(state.folder_video(name), name, _details(request)))


async def _caption_upload(state: ServeState, request: Request) -> Response:
    folder = Path(tempfile.mkdtemp(dir=state.temp_root))
    handed_over = False
    try:
        upload, shown_as = await uploads.receive(request, folder, state.max_upload_bytes, state.read_timeout_s)
        # The worker removes the folder when it is done with it (or when the job is dropped unstarted).
        handed_over = True
        answer = await state.caption(upload, shown_as, _details(request),
                                     cleanup=lambda: shutil.rmtree(folder, ignore_errors=True))
    finally:
        if not handed_over:
            shutil.rmtree(folder, ignore_errors=True)
    return _json(answer)


async def _no_route(state: ServeState, request: Request) -> Response:
    if request.method in ("GET", "HEAD"):
        raise RequestError(HTTPStatus.NOT_FOUND, f"{request.url.path}: no such page")
    headers = await uploads.discard_body(request, state.max_upload_bytes, state.read_timeout_s)
    raise RequestError(HTTPStatus.NOT_FOUND, f"{request.method} {request.url.path}: no such endpoint (POST "
                                             f"/api/caption uploads; the rest is GET)", headers=headers)


def app(state: ServeState) -> Starlette:
    """The ASGI application serving ``state`` (the router's 404 and 405 answered like any other)."""
    routes = [Route("/", _answering(_page), methods=["GET"]),
              Route("/videos/{name:path}", _answering(_clip), methods=["GET"]),
              Route("/api/videos", _answering(_videos), methods=["GET"]),
              Route("/api/health", _answering(_health), methods=["GET"]),
              Route("/api/caption", _answering(_caption_folder_clip), methods=["GET"]),
              Route("/api/caption", _answering(_caption_upload), methods=["POST"])]
    no_route = _answering(_no_route)

    async def router_miss(request: Request, _: HTTPException) -> Response:
        return await no_route(request)

    application = Starlette(routes=routes, exception_handlers={HTTPException: router_miss})
    application.state.serve = state
    return application
