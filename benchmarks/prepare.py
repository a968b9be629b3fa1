"""Preprocessing throughput: `avlformer prepare` (PyAV in-process) vs upstream's method, side by side.

Data: 16 synthetic 10 s 640x360 25 fps clips (h264 + AAC), written with PyAV into a temporary folder.
Ours: ``prepare.prepare_dataset`` with 2 worker processes: frames sampled and resized while decoding, JPEG + base64 in
memory, audio extracted from the video and encoded to mono 32 kHz mp3, all outputs assembled.
Baseline (upstream, docs/upstream.md §1.2-§1.4, re-expressed here): per clip, ffprobe for the duration, the ffmpeg CLI with
``-vf fps=32/duration`` writing full-size JPEG files, and the ffmpeg CLI for the mono 32 kHz mp3 (2 processes);
then every JPEG read back with PIL, shorter side resized to 256, re-encoded, base64-packed into the frame TSV
(2 processes), and the mp3s packed into the HDF5. Both produce the same files.

Prints one JSON object as the last stdout line; ``speedup`` = ours / baseline in videos per second (target >= 3).
Run: ``PYTHONPATH=src python benchmarks/prepare.py [--clips 16] [--workers 2]``.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import multiprocessing
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image

from avlformer.data import prepare
from avlformer.data.audio_hdf import write_audio_hdf
from avlformer.data.tsv import TSVWriter


def write_clip(path: Path, seed: int, seconds: float = 10.0, fps: int = 25, size=(640, 360)) -> None:
    """A moving gradient with a bouncing square (h264) and a tone with noise (AAC, 44.1 kHz stereo)."""
    rng = np.random.default_rng(seed)
    width, height = size
    xs = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    ys = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = container.add_stream("aac", rate=44100, layout="stereo")
        for index in range(int(seconds * fps)):
            shift = index * 4 + seed * 10
            image = np.stack([(xs + shift) % 256 + 0 * ys, (ys + shift) % 256 + 0 * xs,
                              np.full((height, width), (seed * 37) % 256, np.float32)], axis=-1)
            x = (index * 7) % (width - 80)
            image[100:180, x:x + 80] = 255
            image += rng.normal(0, 6, image.shape).astype(np.float32)
            frame = av.VideoFrame.from_ndarray(np.clip(image, 0, 255).astype(np.uint8), format="rgb24")
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        t = np.arange(int(seconds * 44100)) / 44100
        wave = (0.2 * np.sin(2 * np.pi * (220 + 20 * seed) * t) + 0.02 * rng.standard_normal(len(t)))
        frame = av.AudioFrame.from_ndarray(np.stack([wave, wave]).astype(np.float32), format="fltp",
                                           layout="stereo")
        frame.sample_rate = 44100
        for packet in audio.encode(frame):
            container.mux(packet)
        for packet in audio.encode(None):
            container.mux(packet)


# -- baseline: upstream's two-stage pipeline ---------------------------------------------------------------------

def _ffprobe_duration(video: Path) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of",
                          "default=noprint_wrappers=1:nokey=1", str(video)], capture_output=True, text=True)
    duration = float(out.stdout.strip() or 0)
    return duration if duration > 0 else 10.0


def baseline_extract(job: tuple[Path, Path, Path]) -> None:
    video, frame_dir, mp3_dir = job
    rate = 32 / _ffprobe_duration(video)
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "panic", "-y", "-i", str(video), "-vf", f"fps={rate}",
                    str(frame_dir / f"{video.stem}_frame%04d.jpg")], check=True)
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "panic", "-y", "-i", str(video), "-vn", "-ac", "1",
                    "-ar", "32000", str(mp3_dir / f"{video.stem}.mp3")], check=True)


def baseline_row(job: tuple[str, Path, str]) -> list[bytes]:
    key, frame_dir, stem = job
    fields = []
    previous = None
    for index in range(1, 33):
        path = frame_dir / f"{stem}_frame{index:04d}.jpg"
        image = Image.open(path).convert("RGB") if path.is_file() else previous
        previous = image
        ratio = 256 / min(image.size)
        resized = image.resize((round(ratio * image.size[0]), round(ratio * image.size[1])), Image.BILINEAR)
        buffer = io.BytesIO()
        resized.save(buffer, format="JPEG", quality=95)
        fields.append(base64.b64encode(buffer.getvalue()))
    header = json.dumps({"class": -1, "width": resized.size[0], "height": resized.size[1]}).encode()
    return [key.encode(), header] + fields


def run_baseline(videos: list[Path], work: Path, workers: int) -> None:
    frame_dir, mp3_dir = work / "frames", work / "audio_mp3"
    frame_dir.mkdir(parents=True)
    mp3_dir.mkdir(parents=True)
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        list(pool.imap_unordered(baseline_extract, [(v, frame_dir, mp3_dir) for v in videos], chunksize=1))
        jobs = [(f"train/{v.name}", frame_dir, v.stem) for v in sorted(videos)]
        with TSVWriter(work / "frame_tsv" / "train_32frames.img.tsv") as writer:
            for row in pool.imap(baseline_row, jobs, chunksize=1):
                writer.write(row)
    mp3s = sorted(mp3_dir.glob("*.mp3"))
    write_audio_hdf(work / "audio_hdf" / "train_mp3.hdf", [p.stem for p in mp3s], (p.read_bytes() for p in mp3s))


def run_ours(data_dir: Path, workers: int) -> int:
    result = prepare.prepare_dataset(data_dir, splits=["train"], num_frames=32, short_side=256, workers=workers,
                                     progress=False)
    return 0 if result.prepared.get("train") else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    options = parser.parse_args()
    ffmpeg, ffprobe = shutil.which("ffmpeg"), shutil.which("ffprobe")
    result = {"benchmark": "prepare", "clips": options.clips, "workers": options.workers,
              "clip": "10 s 640x360 25 fps h264 + AAC"}
    if not (ffmpeg and ffprobe):
        result.update(error="ffmpeg/ffprobe CLI not found on PATH: the upstream baseline needs them "
                            "(apt-get install ffmpeg)", speedup=None)
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data_dir = root / "data"
        videos_dir = data_dir / "videos" / "train"
        videos_dir.mkdir(parents=True)
        videos = []
        for index in range(options.clips):
            videos.append(videos_dir / f"clip{index:03d}.mp4")
            write_clip(videos[-1], index)
        (data_dir / "captions.json").write_text(json.dumps({v.stem: "a clip." for v in videos}))

        start = time.perf_counter()
        run_baseline(videos, root / "baseline", options.workers)
        baseline_s = time.perf_counter() - start

        start = time.perf_counter()
        code = run_ours(data_dir, options.workers)
        ours_s = time.perf_counter() - start
        if code != 0:
            raise SystemExit(f"prepare failed with exit code {code}")
    result.update(baseline_s=round(baseline_s, 3), ours_s=round(ours_s, 3),
                  baseline_videos_per_s=round(options.clips / baseline_s, 3),
                  ours_videos_per_s=round(options.clips / ours_s, 3),
                  speedup=round(baseline_s / ours_s, 3), target=3.0)
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
