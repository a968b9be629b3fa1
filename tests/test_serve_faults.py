"""`avlformer serve` against hostile or unlucky clients, over real sockets on 127.0.0.1: a burst of uploads,
odd names, a link out of the videos folder, clients that stall, a SIGTERM, and a temporary folder that would put
uploads among the model's files. One tiny random checkpoint (saved to disk, loaded as `serve --model` loads
it) serves every test; each test runs its own server and stops it."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
import torch

pytest.importorskip("uvicorn", reason="the [serve] extra is not installed")

from avlformer.data.recipe import PreprocessRecipe  # noqa: E402
from avlformer.hub import AVLFormer  # noqa: E402
from avlformer.inference.captioner import Captioner  # noqa: E402
from avlformer.modeling.avlformer import AVLFormerConfig  # noqa: E402
from avlformer.serve.listener import CaptionServer  # noqa: E402
from avlformer.serve.server import ServeState  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import media_fixtures  # noqa: E402
from test_serve import multipart  # noqa: E402

BURST = 20
READ_TIMEOUT_S = 1.0     # the test servers' --read-timeout: short, so that stalled clients are cut off quickly
PATIENCE_S = 20.0        # how long a client here waits for anything before the test fails


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-faults")
    torch.manual_seed(0)
    config = AVLFormerConfig.tiny()
    config.max_gen_length = 4
    model = AVLFormer(config)
    model.recipe = PreprocessRecipe(stored_frames=8, short_side=64)
    model.save_pretrained(root / "ckpt")
    videos = root / "videos"
    media_fixtures.write_normal(videos / "clip.mp4")
    outside = root / "outside"
    media_fixtures.write_normal(outside / "secret.mp4")
    (videos / "escape.mp4").symlink_to(outside / "secret.mp4")
    (videos / "passwd.mp4").symlink_to("/etc/passwd")
    (videos / "inner.mp4").symlink_to("clip.mp4")   # a link that stays inside is a clip like any other
    (videos / "loop.mp4").symlink_to("loop.mp4")
    return {"root": root, "checkpoint": root / "ckpt", "videos": videos, "clip": (videos / "clip.mp4").read_bytes(),
            "captioner": Captioner(root / "ckpt", device="cpu", batch_size=1)}


@contextlib.contextmanager
def running(setup, **options):
    state = ServeState(captioner=setup["captioner"], model_name="tiny", videos_dir=setup["videos"],
                       max_upload_bytes=200_000, **options)
    server = CaptionServer(state, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, server.server_address[1], server
    finally:
        server.shutdown()
        thread.join(timeout=PATIENCE_S)
        server.server_close()
    assert not thread.is_alive()
    assert not state.temp_root.exists()


def call(port, method, path, body=None, headers=None):
    """(status, headers, body bytes)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=PATIENCE_S)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


@contextlib.contextmanager
def model_held(captioner):
    """The model blocks until the returned event is set; ``entered`` is set while a caption is inside it."""
    release, entered = threading.Event(), threading.Event()
    original = captioner.caption_inputs

    def held(inputs):
        entered.set()
        release.wait(PATIENCE_S)
        return original(inputs)

    captioner.caption_inputs = held
    try:
        yield release, entered
    finally:
        release.set()
        del captioner.caption_inputs


def wait_until(condition) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


def burst(port, data, count):
    """``count`` uploads sent at the same instant from their own connections: [(status, headers, body) or the
    exception a client got]."""
    results, start = [None] * count, threading.Barrier(count)
    body, headers = multipart("video", "clip.mp4", data)

    def one(i):
        start.wait()
        try:
            results[i] = call(port, "POST", "/api/caption", body, headers)
        except Exception as error:  # a reset or a timeout: what the test must not see
            results[i] = error

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    return threads, results


def test_a_burst_of_uploads_is_all_captioned_or_refused_with_retry_after(setup):
    """Past the queue, a 503 with Retry-After comes back at once (while the model is busy); none is reset."""
    queue_size = 4
    with running(setup, queue_size=queue_size) as (state, port, _), model_held(setup["captioner"]) as (release, _):
        threads, results = burst(port, setup["clip"], BURST)
        wait_until(lambda: sum(r is not None for r in results) >= BURST - queue_size)
        refused = [r for r in results if r is not None]
        release.set()
        for thread in threads:
            thread.join(PATIENCE_S)
    assert not [r for r in results if not isinstance(r, tuple)], results
    assert len(refused) == BURST - queue_size
    for status, headers, body in refused:
        assert status == 503 and int(headers["Retry-After"]) >= 1 and "busy" in json.loads(body)["error"]
    captioned = [r for r in results if not any(r is other for other in refused)]
    assert [status for status, _, _ in captioned] == [200] * queue_size
    assert all(json.loads(body)["caption"] for _, _, body in captioned)


def test_a_burst_within_the_queue_is_all_captioned(setup):
    with running(setup) as (state, port, _):
        threads, results = burst(port, setup["clip"], BURST)
        for thread in threads:
            thread.join(PATIENCE_S * 3)
        assert list(state.temp_root.iterdir()) == []
    assert [r[0] if isinstance(r, tuple) else repr(r) for r in results] == [200] * BURST


def test_the_page_and_health_answer_while_the_model_is_busy(setup):
    with running(setup) as (state, port, _), model_held(setup["captioner"]) as (release, entered):
        threads, results = burst(port, setup["clip"], 2)
        assert entered.wait(PATIENCE_S)
        wait_until(lambda: state.queue.accepted == 2)
        status, _, body = call(port, "GET", "/api/health")
        assert status == 200 and json.loads(body) == {"status": "ok", "queued": 2, "queue_size": 32}
        status, _, body = call(port, "GET", "/")
        assert status == 200 and b"clip.mp4" in body
        assert results == [None, None]  # both still waiting for the model
        release.set()
        for thread in threads:
            thread.join(PATIENCE_S)
    assert [r[0] for r in results] == [200, 200]


def test_a_stop_answers_the_started_captions_and_refuses_the_waiting_ones(setup):
    with running(setup) as (state, port, server), model_held(setup["captioner"]) as (release, entered):
        threads, results = burst(port, setup["clip"], 3)
        assert entered.wait(PATIENCE_S)
        wait_until(lambda: state.queue.accepted == 3)
        server.shutdown()
        wait_until(lambda: any(r is not None for r in results))
        release.set()
        for thread in threads:
            thread.join(PATIENCE_S)
    assert sorted(r[0] for r in results) == [200, 200, 503], results
    (refused,) = [r for r in results if r[0] == 503]
    assert int(refused[1]["Retry-After"]) >= 1 and "stopping" in json.loads(refused[2])["error"]


def test_unknown_or_odd_names_are_404_and_no_answer_names_a_server_path(setup):
    private = [str(setup["root"]), str(setup["root"].resolve())]
    with running(setup) as (state, port, _):
        private.append(str(state.temp_root))
        for name in ["a" * 8000 + ".mp4", "nul\0.mp4", "../ckpt/config.json", "missing.mp4", ".", "clip.mp4/x"]:
            for path in (f"/api/caption?video={urllib.parse.quote(name)}", f"/videos/{urllib.parse.quote(name)}",
                         f"/?video={urllib.parse.quote(name)}"):
                status, _, body = call(port, "GET", path)
                text = body.decode("utf-8", "replace")
                assert not any(folder in text for folder in private), (name[:20], text[:300])
                if path.startswith("/api/"):
                    assert status == 404 and "no such clip" in json.loads(body)["error"], (name[:20], status)
                elif path.startswith("/videos/"):
                    assert status == 404, (name[:20], status)
                else:
                    assert status == 200 and "no such clip" in text
        # A non-video upload's error names the upload, never where the server keeps it.
        body, headers = multipart("video", "notes.mp4", b"not a video" * 50)
        status, _, answer = call(port, "POST", "/api/caption", body, headers)
        assert status == 422 and "notes.mp4" in json.loads(answer)["error"]
        assert not any(folder in answer.decode() for folder in private)


def test_a_link_out_of_the_videos_folder_is_not_followed(setup):
    with running(setup) as (state, port, _):
        status, _, body = call(port, "GET", "/api/videos")
        assert json.loads(body) == {"videos": ["clip.mp4", "inner.mp4"]}
        for name in ("passwd.mp4", "escape.mp4"):
            status, _, body = call(port, "GET", f"/videos/{name}")
            assert status == 404 and b"root:" not in body, name
            status, _, body = call(port, "GET", f"/api/caption?video={name}")
            assert status == 404 and "no such clip" in json.loads(body)["error"], name
        status, _, body = call(port, "GET", "/videos/inner.mp4")
        assert status == 200 and body == setup["clip"]


def closed_within(sock, seconds) -> bool:
    """Whether the server closed ``sock`` (end of stream, or a reset) within ``seconds``."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_a_client_that_stalls_is_cut_off_after_the_read_timeout(setup):
    budget = READ_TIMEOUT_S * 8   # generous: the check is that it ends, not how fast
    with running(setup, read_timeout_s=READ_TIMEOUT_S) as (state, port, _):
        # A bare connect, and headers that never end.
        bare = socket.create_connection(("127.0.0.1", port))
        partial = socket.create_connection(("127.0.0.1", port))
        partial.sendall(b"POST /api/caption HTTP/1.1\r\nHost: x\r\n")
        assert closed_within(bare, budget) and closed_within(partial, budget)
        bare.close(), partial.close()

        # Headers trickled a byte at a time: the deadline is on the whole, not on each byte.
        trickle = socket.create_connection(("127.0.0.1", port))
        started, cut_off = time.monotonic(), False
        for byte in b"GET / HTTP/1.1\r\n" + b"X-Slow: " + b"a" * 200:
            try:
                trickle.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                cut_off = True
                break
            if time.monotonic() - started > budget:
                break
            time.sleep(0.1)
        assert cut_off or closed_within(trickle, 0.5), "a trickling client kept its connection"
        trickle.close()

        # An upload that stops halfway: 408, the connection closed, the partial upload removed.
        body, headers = multipart("video", "clip.mp4", setup["clip"])
        stalled = socket.create_connection(("127.0.0.1", port))
        head = (f"POST /api/caption HTTP/1.1\r\nHost: x\r\nContent-Type: {headers['Content-Type']}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        stalled.sendall(head + body[: len(body) // 2])
        stalled.settimeout(budget)
        answer = b""
        with contextlib.suppress(socket.timeout, ConnectionResetError):
            while chunk := stalled.recv(4096):
                answer += chunk
        stalled.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert list(state.temp_root.iterdir()) == []
        # The server still serves.
        status, _, _ = call(port, "GET", "/api/health")
        assert status == 200


def test_uploads_are_never_written_inside_the_checkpoint_folder(setup, monkeypatch):
    import tempfile
    inside = setup["checkpoint"] / "tmp"
    inside.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(inside))
    with pytest.raises(ValueError, match="inside the checkpoint folder .*TMPDIR"):
        ServeState(captioner=setup["captioner"], model_name="tiny", videos_dir=setup["videos"])
    assert list(inside.iterdir()) == []
    # Beside the checkpoint is fine, and an upload is a new file there: nothing existing is ever written over.
    beside = setup["root"] / "tmp"
    beside.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(beside))
    with running(setup) as (state, port, _), model_held(setup["captioner"]) as (release, entered):
        assert state.temp_root.parent == beside.resolve()
        threads, results = burst(port, setup["clip"], 1)
        assert entered.wait(PATIENCE_S)
        (upload,) = [p for p in state.temp_root.rglob("*") if p.is_file()]
        assert upload.read_bytes() == setup["clip"] and upload.name != "clip.mp4"
        release.set()
        threads[0].join(PATIENCE_S)
    assert results[0][0] == 200
    inside.rmdir()


def test_sigterm_stops_the_serve_command_and_removes_its_temp_folder(setup, tmp_path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp), "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen([sys.executable, "-m", "avlformer.cli", "serve", "--model", str(setup["checkpoint"]),
                                "--port", "0", "--device", "cpu"], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match, (line, process.stderr.read() if process.poll() is not None else "")
        status, _, _ = call(int(match.group(1)), "GET", "/api/videos")
        assert status == 200
        assert [p.name.startswith("avlformer-serve-") for p in temp.iterdir()] == [True]
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "Traceback" not in err and "stopped" in err
    assert list(temp.iterdir()) == []

