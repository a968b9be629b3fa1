"""``avlformer prepare``: raw videos (+ mp3s, or audio taken from the videos) + captions -> the upstream training
files (FACTS §1.3-§1.5): frame TSV (+ .lineidx, .lineidx.8b), ``audio_hdf/<split>_mp3.hdf``, metadata yaml,
caption TSV, linelist, label/img TSVs and COCO-format references, plus ``prepare_report.json``.

Work happens in two phases. Each clip is processed on its own (in a process pool) and its frame-TSV row, mp3 and
a small result record are written atomically into ``<data>/.prepare_work/<split>-<N>f-<S>px/``; the record is
written last, so a clip counts as finished only when all its files are complete, and a rerun after Ctrl-C or a
crash skips it (unless its input files changed). Then the split's files are assembled from the work folder in
one ordered pass, each written atomically; the work folder is removed once the split is complete.

Row order: clips are sorted by ``<id>.mp3``, the order upstream's convert_h5py gives the HDF5 (it sorts mp3
file names), so row i of the caption TSV, the frame TSV and the HDF5 describe the same clip.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures as futures
import contextlib
import csv
import io
import json
import multiprocessing
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np
import yaml
from PIL import Image
from tqdm import tqdm

from avlformer.atomic import atomic_path, atomic_write, write_text_atomic
from avlformer.data import media
from avlformer.data.tsv import TSVWriter

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")
DEFAULT_SPLITS = ("train", "val", "test")
JPEG_QUALITY = 95              # OpenCV's default, which upstream's cv2.imencode used
LOW_RESOLUTION = 128           # shorter side below this is upscaled more than 2x for 256-px frames
WORK_FORMAT_VERSION = 1        # bump when a per-clip work file changes meaning
REPORT_NAME = "prepare_report.json"
ERROR, WARNING = "error", "warning"


# ----------------------------------------------------------------------------------------------------------------
# Problems and paths
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class Problem:
    severity: str      # "error": the clip (or caption) is left out; "warning": kept, but worth a look
    file: str          # relative to the data dir
    reason: str
    split: str = ""
    id: str = ""


@dataclass
class Layout:
    """Every path ``prepare`` reads or writes, for one data dir and one split (FACTS §1.1, §1.5)."""

    data_dir: Path
    split: str
    num_frames: int = 32
    image_size: int = 256

    @property
    def videos(self) -> Path:
        return self.data_dir / "videos" / self.split

    @property
    def mp3s(self) -> Path:
        return self.data_dir / "audio_mp3" / self.split

    @property
    def metadata(self) -> Path:
        return self.data_dir / "metadata"

    @property
    def frame_tsv(self) -> Path:
        return self.data_dir / "frame_tsv" / f"{self.split}_{self.num_frames}frames.img.tsv"

    @property
    def audio_hdf(self) -> Path:
        return self.data_dir / "audio_hdf" / f"{self.split}_mp3.hdf"

    @property
    def yaml(self) -> Path:
        return self.metadata / f"{self.split}_{self.num_frames}frames.yaml"

    def meta(self, suffix: str) -> Path:
        return self.metadata / f"{self.split}.{suffix}"

    @property
    def released_captions(self) -> Path:
        return self.meta("caption.tsv")

    @property
    def work(self) -> Path:
        return self.data_dir / ".prepare_work" / f"{self.split}-{self.num_frames}f-{self.image_size}px"

    def rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.data_dir))
        except ValueError:
            return str(path)


def clip_key(split: str, clip_id: str, extension: str) -> str:
    """Upstream key shape ``<split>/<id>.<ext>``: its loader checks ``basename(key)[:-4]`` against the HDF5
    audio name, and AudioScore splits the key on '/'. So the extension must be 3 letters: ``.webm`` clips get
    ``.mp4`` keys (the key is a name, not a path; ``<split>.img.tsv`` maps it to the real file)."""
    return f"{split}/{clip_id}{extension if len(extension) == 4 else '.mp4'}"


def hdf_order(clip_id: str) -> str:
    return f"{clip_id}.mp3"


# ----------------------------------------------------------------------------------------------------------------
# Inputs: videos and captions
# ----------------------------------------------------------------------------------------------------------------

def find_videos(layout: Layout) -> tuple[dict[str, Path], list[Problem]]:
    """``id -> video path`` for one split; ids present with two extensions are ambiguous and left out."""
    by_id: dict[str, list[Path]] = {}
    problems = []
    for path in sorted(layout.videos.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() not in VIDEO_EXTENSIONS:
            problems.append(Problem(WARNING, layout.rel(path), f"ignored: extension {path.suffix!r} is not one "
                                    f"of {', '.join(VIDEO_EXTENSIONS)}", layout.split, path.stem))
            continue
        by_id.setdefault(path.stem, []).append(path)
    videos = {}
    for clip_id, paths in by_id.items():
        if len(paths) == 1:
            videos[clip_id] = paths[0]
            continue
        names = ", ".join(p.name for p in paths)
        for path in paths:
            problems.append(Problem(ERROR, layout.rel(path), f"duplicate id {clip_id!r} ({names}); rename or "
                                    f"remove all but one", layout.split, clip_id))
    return videos, problems


@dataclass
class Captions:
    texts: dict[str, str] = field(default_factory=dict)
    rejected: set[str] = field(default_factory=set)    # ids whose caption entry was bad (already reported)
    problems: list[Problem] = field(default_factory=list)
    source: str = ""


def _has_invalid_utf8(text: str) -> bool:
    # Text is decoded with surrogateescape, so bytes that are not UTF-8 show up as lone surrogates.
    return any(0xDC80 <= ord(char) <= 0xDCFF for char in text)


def _add_caption(captions: Captions, clip_id: str, text, where: str) -> None:
    def reject(reason: str) -> None:
        captions.rejected.add(clip_id)
        captions.texts.pop(clip_id, None)
        captions.problems.append(Problem(ERROR, captions.source, f"{where}: {reason}", id=clip_id))

    if not clip_id or _has_invalid_utf8(clip_id):
        captions.problems.append(Problem(ERROR, captions.source, f"{where}: empty or non-UTF-8 id"))
    elif clip_id in captions.texts or clip_id in captions.rejected:
        reject(f"duplicate id {clip_id!r}; give each clip exactly one caption")
    elif not isinstance(text, str):
        reject(f"caption of {clip_id!r} is {type(text).__name__}, not text")
    elif _has_invalid_utf8(text):
        reject(f"caption of {clip_id!r} is not valid UTF-8")
    elif not text.strip():
        reject(f"caption of {clip_id!r} is empty")
    else:
        captions.texts[clip_id] = text.strip()


def _read_text(path: Path) -> str:
    return path.read_bytes().decode("utf-8", "surrogateescape").removeprefix("\ufeff")


def _load_json_captions(path: Path, captions: Captions) -> None:
    pairs = json.loads(_read_text(path), object_pairs_hook=lambda items: items)
    if not isinstance(pairs, list) or not all(isinstance(item, tuple) for item in pairs):
        raise ValueError(f"{path}: expected a JSON object {{\"<id>\": \"caption\", ...}}")
    for clip_id, text in pairs:
        _add_caption(captions, clip_id, text, f"id {clip_id!r}")


def _load_csv_captions(path: Path, captions: Captions) -> None:
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    if not reader.fieldnames or not {"id", "caption"} <= {name.strip() for name in reader.fieldnames}:
        raise ValueError(f"{path}: the first line must be the header 'id,caption' (found {reader.fieldnames})")
    for line_number, row in enumerate(reader, start=2):
        row = {(name or "").strip(): value for name, value in row.items()}
        _add_caption(captions, (row.get("id") or "").strip(), row.get("caption") or "", f"line {line_number}")


def _load_caption_tsv(path: Path, captions: Captions) -> None:
    """The released ``<split>.caption.tsv``: ``key \\t [{"caption": ...}, ...]`` (FACTS §1.5)."""
    for line_number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        key, _, payload = line.partition("\t")
        clip_id = Path(key.strip()).stem
        try:
            entries = json.loads(payload)
            texts = [entry["caption"] for entry in entries]
        except (ValueError, TypeError, KeyError):
            _add_caption(captions, clip_id, None, f"line {line_number}: not a JSON list of {{\"caption\": ...}}")
            continue
        if len(texts) > 1:
            captions.problems.append(Problem(WARNING, captions.source, f"line {line_number}: {len(texts)} "
                                     f"captions for {clip_id!r}; the audio alignment needs one per clip, the "
                                     f"first is kept", id=clip_id))
        _add_caption(captions, clip_id, texts[0] if texts else "", f"line {line_number}")


CAPTION_LOADERS = {".json": _load_json_captions, ".csv": _load_csv_captions, ".tsv": _load_caption_tsv}


def caption_source(data_dir: Path, split: str, override: Path | None) -> Path | None:
    if override is not None:
        return override
    for candidate in (data_dir / "metadata" / f"{split}.caption.tsv", data_dir / "captions.json",
                      data_dir / "captions.csv"):
        if candidate.is_file():
            return candidate
    return None


def load_captions(path: Path, data_dir: Path) -> Captions:
    """Read a captions file (JSON object, CSV ``id,caption``, or released caption TSV). A file that cannot be
    parsed at all raises ValueError naming it; a bad entry is reported and left out."""
    loader = CAPTION_LOADERS.get(path.suffix.lower())
    if loader is None:
        raise ValueError(f"{path}: unknown captions format; use .json, .csv or a released .caption.tsv")
    try:
        source = str(path.relative_to(data_dir))
    except ValueError:
        source = str(path)
    captions = Captions(source=source)
    try:
        loader(path, captions)
    except (json.JSONDecodeError, csv.Error) as error:
        raise ValueError(f"{path}: cannot parse captions ({error})") from None
    return captions


# ----------------------------------------------------------------------------------------------------------------
# Per-clip work (runs in worker processes)
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class ClipJob:
    split: str
    clip_id: str
    key: str
    video: str
    mp3: str | None
    work_dir: str
    data_dir: str
    num_frames: int
    image_size: int
    decoder_threads: int

    def fingerprint(self) -> dict:
        """What a finished result depends on: change any of it and the clip is processed again."""
        def stat(path):
            if path is None:
                return None
            info = os.stat(path)
            return [info.st_size, info.st_mtime_ns]
        return {"version": WORK_FORMAT_VERSION, "video": stat(self.video), "mp3": stat(self.mp3),
                "num_frames": self.num_frames, "image_size": self.image_size, "key": self.key}

    def work_file(self, suffix: str) -> Path:
        return Path(self.work_dir) / f"{self.clip_id}{suffix}"

    def rel(self, path) -> str:
        return os.path.relpath(path, self.data_dir)


def load_finished(job: ClipJob) -> dict | None:
    """The clip's stored result when it is complete and still matches its inputs, else None."""
    record = job.work_file(".json")
    try:
        result = json.loads(record.read_text(encoding="utf-8"))
        if result.get("fingerprint") != job.fingerprint():
            return None
    except (OSError, ValueError):
        return None
    if result["ok"] and not (job.work_file(".row").is_file() and job.work_file(".mp3").is_file()):
        return None
    return result


def encode_jpeg_b64(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return base64.b64encode(buffer.getvalue())


def frame_row(key: str, frames: np.ndarray) -> list[bytes]:
    """One frame-TSV row (FACTS §1.3): key, the JSON header, one base64 JPEG per frame."""
    height, width = frames.shape[1:3]
    header = json.dumps({"class": -1, "width": int(width), "height": int(height)})
    return [key.encode("utf-8"), header.encode("utf-8")] + [encode_jpeg_b64(frame) for frame in frames]


def _video_warnings(job: ClipJob, sample: media.FrameSample) -> list[str]:
    info, (height, width) = sample.info, sample.frames.shape[1:3]
    warnings = []
    declared = info.declared_duration
    if declared and declared - info.duration > max(0.5, 0.1 * declared):
        warnings.append(f"video frames cover only {info.duration:.2f} s of the declared {declared:.2f} s "
                        f"(truncated file?)")
    if sample.decode_errors:
        warnings.append(f"{sample.decode_errors} corrupt video packet(s) skipped")
    if sample.num_distinct < job.num_frames:
        warnings.append(f"only {sample.num_distinct} distinct decodable frame(s) for {job.num_frames} samples; "
                        f"frames are repeated")
    if info.variable_frame_rate:
        warnings.append("variable frame rate; frames are sampled by timestamp, uniformly in time")
    short_side = min(info.width, info.height)
    if short_side < LOW_RESOLUTION and job.image_size > short_side:
        warnings.append(f"low resolution {info.width}x{info.height}: upscaled {job.image_size / short_side:.1f}x")
    if height > width:
        warnings.append(f"portrait video ({width}x{height} after resizing): a centre crop keeps only the middle")
    return warnings


def _conforming_mp3(job: ClipJob, warnings: list[str]) -> tuple[bytes, float] | None:
    """The clip's own mp3 (stored byte for byte, as upstream) if usable; re-encoded when it is not mono 32 kHz,
    which upstream's loader assumes without checking. None when unreadable (the caller falls back)."""
    path = Path(job.mp3)
    data = path.read_bytes()
    try:
        info = media.inspect_mp3(data, job.rel(path))
    except media.MediaError as error:
        warnings.append(f"{job.rel(path)} unusable ({error.reason}); audio taken from the video instead")
        return None
    if info.sample_rate == media.SAMPLE_RATE and info.channels == 1:
        return data, info.duration
    track = media.extract_audio(data, name=job.rel(path))
    warnings.append(f"{job.rel(path)} is {info.sample_rate} Hz with {info.channels} channel(s); re-encoded to "
                    f"{media.SAMPLE_RATE} Hz mono")
    return track.mp3, track.duration


def clip_audio(job: ClipJob, video_seconds: float, warnings: list[str]) -> bytes:
    """mp3 bytes for the clip: its audio_mp3 file, else the video's own audio, else silence (with a warning)."""
    found = _conforming_mp3(job, warnings) if job.mp3 else None
    if found is None:
        try:
            track = media.extract_audio(job.video, name=job.rel(job.video))
            found = (track.mp3, track.duration)
            if track.decode_errors:
                warnings.append(f"{track.decode_errors} corrupt audio packet(s) skipped")
        except media.MediaError as error:
            warnings.append(f"{error.reason}: {media.CLIP_SECONDS:g} s of silence used instead")
            return media.silent_mp3(media.CLIP_SECONDS)
    mp3, seconds = found
    if abs(seconds - video_seconds) > max(0.5, 0.05 * video_seconds):
        relation = "shorter" if seconds < video_seconds else "longer"
        warnings.append(f"audio ({seconds:.2f} s) is {relation} than the video ({video_seconds:.2f} s)")
    return mp3


def process_clip(job: ClipJob) -> dict:
    """Frames + audio of one clip into the work folder. Never raises for bad input: the result says why."""
    result = {"id": job.clip_id, "key": job.key, "fingerprint": job.fingerprint(), "ok": False, "problems": []}
    video_file = job.rel(job.video)
    try:
        sample = media.read_frames(job.video, job.num_frames, job.image_size, threads=job.decoder_threads)
        warnings = _video_warnings(job, sample)
        mp3 = clip_audio(job, sample.info.duration, warnings)
        with atomic_write(job.work_file(".row"), "wb") as handle:
            handle.write(b"\t".join(frame_row(job.key, sample.frames)))
        with atomic_write(job.work_file(".mp3"), "wb") as handle:
            handle.write(mp3)
        result["ok"] = True
        result["problems"] = [asdict(Problem(WARNING, video_file, reason)) for reason in warnings]
    except media.MediaError as error:
        result["problems"] = [asdict(Problem(ERROR, video_file, error.reason))]
    except Exception as error:  # noqa: BLE001 - one clip's unexpected failure must not stop the others
        result["problems"] = [asdict(Problem(ERROR, video_file, f"unexpected {type(error).__name__}: {error}"))]
    write_text_atomic(job.work_file(".json"), json.dumps(result))
    return result


def _crashed_result(job: ClipJob) -> dict:
    reason = "the decoder crashed its worker process on this file (corrupt video?)"
    result = {"id": job.clip_id, "key": job.key, "fingerprint": job.fingerprint(), "ok": False,
              "problems": [asdict(Problem(ERROR, job.rel(job.video), reason))]}
    write_text_atomic(job.work_file(".json"), json.dumps(result))
    return result


# ----------------------------------------------------------------------------------------------------------------
# Running the clips
# ----------------------------------------------------------------------------------------------------------------

def _run_in_pool(jobs: list[ClipJob], workers: int, results: dict, progress) -> list[ClipJob]:
    """Run ``jobs`` with at most ``2 * workers`` in flight. If a worker dies (a decoder crash), return the jobs
    that were in flight then: one of them is the culprit."""
    pending = iter(jobs)
    in_flight: dict[futures.Future, ClipJob] = {}
    context = multiprocessing.get_context("spawn")
    executor = futures.ProcessPoolExecutor(max_workers=workers, mp_context=context)
    try:
        while True:
            while len(in_flight) < 2 * workers:
                job = next(pending, None)
                if job is None:
                    break
                in_flight[executor.submit(process_clip, job)] = job
            if not in_flight:
                return []
            done, _ = futures.wait(in_flight, return_when=futures.FIRST_COMPLETED)
            for future in done:
                job = in_flight.pop(future)
                try:
                    results[job.clip_id] = future.result()
                except futures.process.BrokenProcessPool:
                    return [job] + list(in_flight.values())
                progress.update(1)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def run_clips(jobs: list[ClipJob], workers: int, progress) -> dict[str, dict]:
    results: dict[str, dict] = {}
    if workers <= 1:
        # In-process: simplest to debug; finished clips are on disk, so even a hard crash loses only the current one.
        for job in jobs:
            results[job.clip_id] = process_clip(job)
            progress.update(1)
        return results
    remaining = jobs
    while remaining:
        suspects = _run_in_pool(remaining, workers, results, progress)
        for job in suspects:  # each alone, so a crash names its file and spares the others
            if job.clip_id not in results and _run_in_pool([job], 1, results, progress):
                results[job.clip_id] = _crashed_result(job)
                progress.update(1)
        remaining = [job for job in remaining if job.clip_id not in results]
    return results


# ----------------------------------------------------------------------------------------------------------------
# Assembling a split
# ----------------------------------------------------------------------------------------------------------------

def write_audio_hdf(path: Path, names: list[str], payloads) -> None:
    """FACTS §1.4: ``audio_name`` (vlen str) and ``mp3`` (vlen uint8, the raw mp3 file bytes), row i = names[i].
    ``payloads`` yields bytes in the same order (streamed: the whole split never sits in memory)."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as handle:
            # track_times=False: identical inputs give identical bytes (reruns and resumes are comparable).
            handle.create_dataset("audio_name", data=np.array(names, dtype=object), dtype=h5py.string_dtype(),
                                  track_times=False)
            mp3 = handle.create_dataset("mp3", shape=(len(names),), dtype=h5py.vlen_dtype(np.uint8),
                                        track_times=False)
            count = 0
            for index, payload in enumerate(payloads):
                mp3[index] = np.frombuffer(payload, dtype=np.uint8)
                count += 1
            if count != len(names):
                raise ValueError(f"{path}: {len(names)} names but {count} mp3 payloads")


def pack_mp3_folder(folder: Path, out_path: Path) -> int:
    """Upstream's convert_h5py: every ``*.mp3`` of ``folder`` in sorted name order, raw bytes, into one HDF5."""
    paths = sorted(folder.glob("*.mp3"))
    if not paths:
        raise ValueError(f"{folder}: no .mp3 files")
    write_audio_hdf(out_path, [path.stem for path in paths], (path.read_bytes() for path in paths))
    return len(paths)


def coco_references(keys: list[str], texts: list[str]) -> dict:
    """COCO captions dict as upstream's evaluation reads it (FACTS §1.5)."""
    return {
        "annotations": [{"image_id": key, "caption": text, "id": index} for index, (key, text)
                        in enumerate(zip(keys, texts))],
        "images": [{"id": key, "file_name": key} for key in keys],
        "type": "captions", "info": "dummy", "licenses": "dummy",
    }


def metadata_yaml(layout: Layout) -> dict:
    """Paths as upstream resolves them: ``img`` and ``audio`` against the data dir, the rest against metadata/."""
    return {
        "caption": layout.meta("caption.tsv").name,
        "caption_coco_format": layout.meta("caption_coco_format.json").name,
        "caption_linelist": layout.meta("caption.linelist.tsv").name,
        "img": layout.rel(layout.frame_tsv),
        "label": layout.meta("label.tsv").name,
        "audio": layout.rel(layout.audio_hdf),
    }


def _write_lines(path: Path, rows: list[list[str]]) -> None:
    with atomic_write(path, "w") as handle:
        handle.writelines("\t".join(row) + "\n" for row in rows)


def assemble_split(layout: Layout, clips: list[tuple[ClipJob, str]]) -> None:
    """Write every output file of the split from the work folder; ``clips`` are (job, caption) in output order."""
    with TSVWriter(layout.frame_tsv) as writer:
        for job, _ in clips:
            writer.write(job.work_file(".row").read_bytes().split(b"\t"))
    write_audio_hdf(layout.audio_hdf, [job.clip_id for job, _ in clips],
                    (job.work_file(".mp3").read_bytes() for job, _ in clips))
    keys = [job.key for job, _ in clips]
    texts = [text for _, text in clips]
    caption_rows = [[key, json.dumps([{"caption": text}])] for key, text in zip(keys, texts)]
    _write_lines(layout.meta("caption.tsv"), caption_rows)
    _write_lines(layout.meta("label.tsv"), caption_rows)
    _write_lines(layout.meta("caption.linelist.tsv"), [[str(index), "0"] for index in range(len(keys))])
    _write_lines(layout.meta("img.tsv"), [[job.key, layout.rel(Path(job.video))] for job, _ in clips])
    write_text_atomic(layout.meta("caption_coco_format.json"), json.dumps(coco_references(keys, texts)))
    # The yaml last: its presence says the split is complete.
    write_text_atomic(layout.yaml, yaml.safe_dump(metadata_yaml(layout), sort_keys=False))


# ----------------------------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", required=True, type=Path,
                        help="dataset root: videos/<split>/, optional audio_mp3/<split>/, captions (see docs/data.md)")
    parser.add_argument("--splits", nargs="+", default=list(DEFAULT_SPLITS),
                        help="splits to prepare (default: those of train/val/test that have a videos folder)")
    parser.add_argument("--num-frames", type=int, default=32, help="frames sampled uniformly per clip")
    parser.add_argument("--image-size", type=int, default=256, help="shorter side of the stored frames, pixels")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="processes decoding clips in parallel (1 = in this process)")
    parser.add_argument("--captions", type=Path, default=None,
                        help="captions file (.json {id: caption}, .csv id,caption, or a released .caption.tsv); "
                             "default: metadata/<split>.caption.tsv, else captions.json, else captions.csv")
    parser.add_argument("--strict", action="store_true",
                        help="exit non-zero when any clip or caption was left out because of an error")


def _plan_split(layout: Layout, captions: Captions, videos: dict[str, Path], decoder_threads: int
                ) -> tuple[list[ClipJob], dict[str, str], list[Problem]]:
    problems = []
    jobs, texts = [], {}
    for clip_id in sorted(videos, key=hdf_order):
        video = videos[clip_id]
        if clip_id not in captions.texts:
            if clip_id not in captions.rejected:
                problems.append(Problem(ERROR, layout.rel(video), "video has no caption; left out", layout.split,
                                        clip_id))
            continue
        mp3 = layout.mp3s / f"{clip_id}.mp3"
        jobs.append(ClipJob(split=layout.split, clip_id=clip_id, key=clip_key(layout.split, clip_id, video.suffix),
                            video=str(video), mp3=str(mp3) if mp3.is_file() else None, work_dir=str(layout.work),
                            data_dir=str(layout.data_dir), num_frames=layout.num_frames,
                            image_size=layout.image_size, decoder_threads=decoder_threads))
        texts[clip_id] = captions.texts[clip_id]
    return jobs, texts, problems


def prepare_split(layout: Layout, captions: Captions, workers: int) -> tuple[int, list[Problem]]:
    """Process and assemble one split; returns (clips written, problems)."""
    videos, problems = find_videos(layout)
    jobs, texts, plan_problems = _plan_split(layout, captions, videos, max(1, (os.cpu_count() or 1) // workers))
    problems += plan_problems
    layout.work.mkdir(parents=True, exist_ok=True)
    results = {job.clip_id: found for job in jobs if (found := load_finished(job)) is not None}
    todo = [job for job in jobs if job.clip_id not in results]
    with tqdm(total=len(jobs), initial=len(results), desc=f"prepare {layout.split}", unit="clip") as progress:
        results.update(run_clips(todo, workers, progress))
    for job in jobs:
        problems += [Problem(**{**problem, "split": layout.split, "id": job.clip_id})
                     for problem in results[job.clip_id]["problems"]]
    kept = [(job, texts[job.clip_id]) for job in jobs if results[job.clip_id]["ok"]]
    if not kept:
        problems.append(Problem(ERROR, layout.rel(layout.videos), "no clip of this split could be prepared; "
                                "nothing written", layout.split))
        return 0, problems
    assemble_split(layout, kept)
    shutil.rmtree(layout.work, ignore_errors=True)
    with contextlib.suppress(OSError):  # only succeeds once no split has work left
        layout.work.parent.rmdir()
    return len(kept), problems


def _orphan_captions(data_dir: Path, captions: Captions) -> list[Problem]:
    """Captions whose id has no video in any split folder."""
    video_ids = {path.stem for path in (data_dir / "videos").glob("*/*") if path.suffix.lower() in VIDEO_EXTENSIONS}
    return [Problem(ERROR, captions.source, f"caption for {clip_id!r} has no video in videos/<split>/",
                    id=clip_id) for clip_id in sorted(set(captions.texts) - video_ids)]


def _splits_to_run(args) -> tuple[list[str], list[str], list[Problem]]:
    """(splits to prepare, splits already prepared without raw videos, problems)."""
    explicit = args.splits != list(DEFAULT_SPLITS)
    splits, done, problems = [], [], []
    for split in args.splits:
        layout = Layout(args.data_dir, split, args.num_frames, args.image_size)
        if layout.videos.is_dir():
            splits.append(split)
        elif layout.yaml.is_file():  # e.g. the released processed files: usable as they are
            done.append(split)
        elif explicit:
            problems.append(Problem(ERROR, layout.rel(layout.videos), "split folder not found", split))
    return splits, done, problems


def _print_summary(report: dict, report_path: Path, limit: int = 30) -> None:
    for split, counts in report["splits"].items():
        print(f"{split}: {counts['prepared']} clip(s) prepared, {counts['errors']} error(s), "
              f"{counts['warnings']} warning(s)")
    problems = report["problems"]
    for problem in problems[:limit]:
        print(f"  {problem['severity'].upper():7s} {problem['file']}: {problem['reason']}")
    if len(problems) > limit:
        print(f"  ... {len(problems) - limit} more")
    print(f"report: {report_path}")


def main(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir
    if not data_dir.is_dir():
        print(f"error: {data_dir}: data dir not found", file=sys.stderr)
        return 2
    splits, done, problems = _splits_to_run(args)
    for split in done:
        print(f"{split}: no videos/{split} folder but metadata/{split}_{args.num_frames}frames.yaml exists: "
              f"already prepared, nothing to do")
    if not splits and not done and not problems:
        problems.append(Problem(ERROR, "videos", f"no split folders ({', '.join(args.splits)}) under "
                                f"{data_dir / 'videos'}"))
    report = {"data_dir": str(data_dir), "num_frames": args.num_frames, "image_size": args.image_size,
              "splits": {}, "problems": []}
    checked_sources: set[Path] = set()
    try:
        for split in splits:
            layout = Layout(data_dir, split, args.num_frames, args.image_size)
            source = caption_source(data_dir, split, args.captions)
            if source is None:
                problems.append(Problem(ERROR, layout.rel(layout.videos), "no captions found (captions.json, "
                                        "captions.csv or metadata/<split>.caption.tsv); split skipped", split))
                continue
            captions = load_captions(source, data_dir)
            if source not in checked_sources:  # a shared captions file is checked once, not once per split
                checked_sources.add(source)
                problems += captions.problems + _orphan_captions(data_dir, captions)
            count, split_problems = prepare_split(layout, captions, max(1, args.workers))
            problems += split_problems
            report["splits"][split] = {"prepared": count,
                                       "errors": sum(p.severity == ERROR for p in split_problems),
                                       "warnings": sum(p.severity == WARNING for p in split_problems)}
    except ValueError as error:  # an unreadable captions file: nothing sensible can be prepared from it
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished clips are kept; run the same command again to resume", file=sys.stderr)
        return 130
    report["problems"] = [asdict(problem) for problem in problems]
    report_path = data_dir / REPORT_NAME
    write_text_atomic(report_path, json.dumps(report, indent=2))
    _print_summary(report, report_path)
    if not done and not any(counts["prepared"] for counts in report["splits"].values()):
        return 1
    return 1 if args.strict and any(problem.severity == ERROR for problem in problems) else 0
