"""`avlformer serve`: the JSON endpoint over real HTTP on 127.0.0.1 (ephemeral port), and the page in a real
headless Chromium. One tiny random model and one tiny clip serve every test; the server stops at the end."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import torch

pytest.importorskip("python_multipart", reason="the [serve] extra is not installed")

from avlformer.cli import main as cli_main  # noqa: E402
from avlformer.data.recipe import PreprocessRecipe  # noqa: E402
from avlformer.hub import AVLFormer  # noqa: E402
from avlformer.inference.captioner import Captioner  # noqa: E402
from avlformer.modeling.avlformer import AVLFormerConfig  # noqa: E402
from avlformer.serve.listener import CaptionServer  # noqa: E402
from avlformer.serve.server import ServeState  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import media_fixtures  # noqa: E402

MAX_UPLOAD = 200_000  # bytes: the tiny clip is ~10 kB


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    config = AVLFormerConfig.tiny()
    config.max_gen_length = 6
    model = AVLFormer(config)
    model.recipe = PreprocessRecipe(stored_frames=8, short_side=64)
    videos = root / "videos"
    media_fixtures.write_normal(videos / "clip.mp4")
    media_fixtures.write_not_a_video(videos / "broken.mp4")
    state = ServeState(captioner=Captioner(model, device="cpu", batch_size=1), model_name="tiny",
                       videos_dir=videos, max_upload_bytes=MAX_UPLOAD)
    server = CaptionServer(state, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"server": server, "port": server.server_address[1], "videos": videos, "state": state}
    server.shutdown()
    thread.join(timeout=30)
    assert not thread.is_alive()
    server.server_close()
    assert not state.temp_root.exists(), "the private upload folder outlived the server"


def request(port, method, path, body=None, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def multipart(field: str, filename: str, data: bytes) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def post_video(port, filename, data, field="video", path="/api/caption"):
    body, headers = multipart(field, filename, data)
    status, payload = request(port, "POST", path, body, headers)
    return status, json.loads(payload)


def test_json_endpoint_captions_an_uploaded_clip(served):
    data = (served["videos"] / "clip.mp4").read_bytes()
    status, answer = post_video(served["port"], "my clip.mp4", data)
    assert status == 200, answer
    assert set(answer) == {"caption", "confidence", "audio_source", "warnings"}
    assert isinstance(answer["caption"], str) and answer["caption"]
    assert 0.0 <= answer["confidence"] <= 1.0
    assert answer["audio_source"] == "video"
    # Same clip through the Python API: the server adds nothing and loses nothing.
    expected = served["state"].captioner([served["videos"] / "clip.mp4"])[0]
    assert answer["caption"] == expected.caption
    assert answer["confidence"] == pytest.approx(expected.confidence)
    # Uploads are removed once answered.
    assert list(served["state"].temp_root.iterdir()) == []


def test_details_carry_frames_spectrogram_and_mask(served):
    status, answer = post_video(served["port"], "clip.mp4", (served["videos"] / "clip.mp4").read_bytes(),
                                path="/api/caption?details=1")
    assert status == 200, answer
    assert len(answer["frames"]) == served["state"].captioner.spec.num_frames
    assert all(f.startswith("data:image/jpeg;base64,") for f in answer["frames"])
    assert answer["spectrogram"].startswith("data:image/png;base64,")
    assert answer["attention_mask"].startswith("data:image/png;base64,")


def test_bad_requests_get_4xx_json_errors_and_the_server_stays_up(served):
    port = served["port"]
    status, answer = post_video(port, "notes.mp4", b"this is not a video at all" * 20)
    assert status == 422 and "notes.mp4" in answer["error"]
    status, answer = post_video(port, "big.mp4", b"\0" * (MAX_UPLOAD + 1))
    assert status == 413 and "limit" in answer["error"]
    status, answer = post_video(port, "clip.mp4", b"abc", field="file")
    assert status == 400 and "`video`" in answer["error"]
    status, payload = request(port, "POST", "/api/caption", b"{}", {"Content-Type": "application/json"})
    assert status == 415 and "multipart" in json.loads(payload)["error"]
    status, answer = post_video(port, "empty.mp4", b"")
    assert status == 422 and "empty.mp4: empty file" in answer["error"]
    status, payload = request(port, "POST", "/api/caption", b"garbage\r\n\r\n--x--\r\n",
                              {"Content-Type": "multipart/form-data; boundary=x"})
    assert status == 400 and "malformed multipart" in json.loads(payload)["error"]
    status, payload = request(port, "GET", "/api/caption?video=../../etc/passwd")
    assert status == 404 and "no such clip" in json.loads(payload)["error"]
    status, payload = request(port, "GET", "/nowhere")
    assert status == 404
    # Still serving, and no upload left behind.
    status, answer = post_video(port, "clip.mp4", (served["videos"] / "clip.mp4").read_bytes())
    assert status == 200 and answer["caption"]
    assert list(served["state"].temp_root.iterdir()) == []


def test_oversized_upload_is_refused_before_its_body_is_read(served):
    # Claims a huge body and sends none of it: the answer must come from the header alone.
    connection = http.client.HTTPConnection("127.0.0.1", served["port"], timeout=30)
    connection.putrequest("POST", "/api/caption")
    connection.putheader("Content-Type", "multipart/form-data; boundary=x")
    connection.putheader("Content-Length", str(10 ** 10))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and "limit" in json.loads(response.read())["error"]
    connection.close()


def test_folder_clips_are_listed_and_captioned_by_name(served):
    status, payload = request(served["port"], "GET", "/api/videos")
    assert json.loads(payload) == {"videos": ["broken.mp4", "clip.mp4"]}
    status, payload = request(served["port"], "GET", "/api/caption?video=clip.mp4")
    assert status == 200 and json.loads(payload)["caption"]
    status, payload = request(served["port"], "GET", "/api/caption?video=broken.mp4")
    assert status == 422 and "broken.mp4" in json.loads(payload)["error"]


def test_requests_are_queued_on_one_model(served):
    """Concurrent uploads all succeed, and the model never runs two at once."""
    captioner = served["state"].captioner
    running, overlap = [0], []
    original = captioner.caption_inputs

    def watched(inputs):
        running[0] += 1
        overlap.append(running[0])
        try:
            return original(inputs)
        finally:
            running[0] -= 1

    captioner.caption_inputs = watched
    try:
        data = (served["videos"] / "clip.mp4").read_bytes()
        results = []
        threads = [threading.Thread(target=lambda: results.append(post_video(served["port"], "c.mp4", data)))
                   for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        del captioner.caption_inputs
    assert [status for status, _ in results] == [200, 200, 200]
    assert max(overlap) == 1


def test_serve_command_refuses_bad_flags_in_one_line(tmp_path, capsys):
    assert cli_main(["serve", "--model", str(tmp_path / "missing"), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing" in err[0] and "no such checkpoint" in err[0]
    assert cli_main(["serve", "--model", "x", "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------- browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def headless(url: str, tmp_path: Path, budget_ms: int = 20000) -> tuple[str, list[str]]:
    """(the DOM after the page's scripts ran, the browser's console lines)."""
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
        capture_output=True, text=True, timeout=120)
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    return result.stdout, console


def element_text(dom: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
    assert match, f"no #{element_id} in the page"
    return match.group(1).strip()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_page_in_headless_chromium_loads_cleanly_and_shows_an_uploaded_clips_caption(served, tmp_path):
    expected = served["state"].captioner([served["videos"] / "clip.mp4"])[0].caption
    base = f"http://127.0.0.1:{served['port']}/"

    dom, console = headless(base, tmp_path)
    assert console == [], console
    assert 'data-ready="1"' in dom, "the page's script did not run to the end"
    assert "clip.mp4" in dom  # the folder picker

    # ?upload= makes the page's own script fetch the clip and POST it as the file input would.
    dom, console = headless(base + "?upload=clip.mp4", tmp_path)
    assert console == [], console
    assert element_text(dom, "caption") == expected
    assert re.search(r'id="result"(?![^>]*hidden)', dom), "the result panel stayed hidden"
    assert dom.count('alt="frame ') == served["state"].captioner.spec.num_frames

    # A non-video from the folder: the error is on the page, and the server keeps serving.
    dom, console = headless(base + "?upload=broken.mp4", tmp_path)
    assert "broken.mp4" in element_text(dom, "error")
    status, _ = request(served["port"], "GET", "/")
    assert status == 200
