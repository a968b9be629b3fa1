"""One clip's work (in a worker process), kept in the work folder until the split is assembled: ``<id>.row``,
``<id>.mp3`` and, written last, ``<id>.json``, the record that makes the clip finished (docs/data.md, "Parallel,
resumable, and what happens to bad input").
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from avlformer.atomic import atomic_write, write_text_atomic
from avlformer.data import media
from avlformer.data.audio_hdf import HDF5AudioReader
from avlformer.data.clip_media import clip_audio, frame_row, read_clip_frames
from avlformer.data.file_problems import environment_message, is_environment_error
from avlformer.data.prepare.layout import ERROR, WARNING, EnvironmentFault, Problem
from avlformer.data.prepare.outputs_record import digest, holds
from avlformer.data.recipe import PreprocessRecipe
from avlformer.data.tsv import TSVFile

WORK_FORMAT_VERSION = 2        # bump when a per-clip work file changes meaning
LOW_RESOLUTION = 128           # shorter side below this is upscaled more than 2x for 256-px frames
WORK_FILES = {"row": ".row", "mp3": ".mp3"}


@dataclass
class ClipJob:
    split: str
    clip_id: str
    key: str
    video: str
    mp3: str | None
    work_dir: str
    data_dir: str
    recipe: PreprocessRecipe
    decoder_threads: int

    def fingerprint(self) -> dict:
        """What a finished result depends on: change any of it and the clip is processed again."""
        def stat(path):
            if path is None:
                return None
            info = os.stat(path)
            return [info.st_size, info.st_mtime_ns]
        return {"version": WORK_FORMAT_VERSION, "video": stat(self.video), "mp3": stat(self.mp3),
                "recipe": self.recipe.to_dict(), "key": self.key}

    def work_file(self, suffix: str) -> Path:
        return Path(self.work_dir) / f"{self.clip_id}{suffix}"

    def rel(self, path) -> str:
        return os.path.relpath(path, self.data_dir)


def load_finished(job: ClipJob) -> dict | None:
    """The clip's stored result when it is complete, matches its inputs and its files are undamaged, else None."""
    try:
        result = json.loads(job.work_file(".json").read_text(encoding="utf-8"))
        if result.get("fingerprint") != job.fingerprint():
            return None
    except (OSError, ValueError, AttributeError):
        return None
    if result.get("ok") and not all(holds(job.work_file(suffix), result.get("files", {}).get(name))
                                    for name, suffix in WORK_FILES.items()):
        return None
    return result


def _store(job: ClipJob, result: dict, row: bytes, mp3: bytes) -> dict:
    for suffix, data in ((".row", row), (".mp3", mp3)):
        with atomic_write(job.work_file(suffix), "wb") as handle:
            handle.write(data)
    result.update(ok=True, files={"row": digest(row), "mp3": digest(mp3)})
    return result


def _video_warnings(job: ClipJob, sample: media.FrameSample) -> list[str]:
    info, (height, width) = sample.info, sample.frames.shape[1:3]
    frames, short_side = job.recipe.stored_frames, job.recipe.short_side
    warnings = []
    declared = info.declared_duration
    if declared and declared - info.duration > max(0.5, 0.1 * declared):
        warnings.append(f"video frames cover only {info.duration:.2f} s of the declared {declared:.2f} s "
                        f"(truncated file?)")
    if sample.decode_errors:
        warnings.append(f"{sample.decode_errors} corrupt video packet(s) skipped")
    if sample.num_distinct < frames:
        warnings.append(f"only {sample.num_distinct} distinct decodable frame(s) for {frames} samples; "
                        f"frames are repeated")
    if info.variable_frame_rate:
        warnings.append("variable frame rate; frames are sampled by timestamp, uniformly in time")
    source_short = min(info.width, info.height)
    if source_short < LOW_RESOLUTION and short_side > source_short:
        warnings.append(f"low resolution {info.width}x{info.height}: upscaled {short_side / source_short:.1f}x")
    if height > width:
        warnings.append(f"portrait video ({width}x{height} after resizing): a centre crop keeps only the middle")
    return warnings


def _new_result(job: ClipJob) -> dict:
    return {"id": job.clip_id, "key": job.key, "fingerprint": job.fingerprint(), "ok": False, "problems": []}


def process_clip(job: ClipJob) -> dict:
    """Frames + audio of one clip into the work folder. Never raises for bad input: the result says why. A
    failure of the machine (``file_problems.is_environment_error``) raises EnvironmentFault instead, and leaves
    no result behind, so a rerun does the clip again."""
    try:
        return _process_clip(job)
    except OSError as error:
        if is_environment_error(error):
            raise EnvironmentFault(environment_message(error, job.video)) from None
        raise


def _process_clip(job: ClipJob) -> dict:
    result = _new_result(job)
    video_file = job.rel(job.video)
    try:
        sample = read_clip_frames(job.video, job.recipe, threads=job.decoder_threads)
        warnings = _video_warnings(job, sample)
        audio = clip_audio(job.video, job.mp3, job.recipe, video_seconds=sample.info.duration, name=job.rel)
        row = b"\t".join(frame_row(job.key, sample.frames, job.recipe))
        _store(job, result, row, audio.mp3)
        result["problems"] = [asdict(Problem(WARNING, video_file, reason)) for reason in warnings + audio.warnings]
    except media.MediaError as error:
        result["problems"] = [asdict(Problem(ERROR, video_file, error.reason))]
    except Exception as error:  # noqa: BLE001 - one clip's unexpected failure must not stop the others
        if is_environment_error(error):
            raise
        result["problems"] = [asdict(Problem(ERROR, video_file, f"unexpected {type(error).__name__}: {error}"))]
    write_text_atomic(job.work_file(".json"), json.dumps(result))
    return result


def crashed_result(job: ClipJob) -> dict:
    reason = "the decoder crashed its worker process on this file (corrupt video?)"
    result = {**_new_result(job), "problems": [asdict(Problem(ERROR, job.rel(job.video), reason))]}
    write_text_atomic(job.work_file(".json"), json.dumps(result))
    return result


class PreviousOutputs:
    """The frame TSV and HDF5 of the split's last complete run, with the clip records ``outputs_record`` kept for
    them: a clip whose inputs are unchanged is copied back into the work folder instead of being decoded again."""

    def __init__(self, frame_tsv: Path, audio_hdf: Path, entries: list[dict]):
        self.frame_tsv, self.audio_hdf = frame_tsv, audio_hdf
        self.entries = {entry["result"]["id"]: entry for entry in entries}
        self._frames: TSVFile | None = None
        self._audio: HDF5AudioReader | None = None

    def restore(self, job: ClipJob) -> dict | None:
        entry = self.entries.get(job.clip_id)
        if entry is None or entry["result"].get("fingerprint") != job.fingerprint():
            return None
        try:
            if self._frames is None:
                self._frames, self._audio = TSVFile(self.frame_tsv), HDF5AudioReader(self.audio_hdf)
            row = self._frames.row_bytes(entry["row"])
            mp3 = self._audio.mp3(entry["row"]).tobytes()
            files = entry["result"]["files"]
            if self._audio.names[entry["row"]] != job.clip_id or digest(row) != files["row"] \
                    or digest(mp3) != files["mp3"]:
                return None
        except (OSError, ValueError, IndexError, KeyError):
            return None  # the files changed since: decode the clip again
        result = _store(job, {**entry["result"]}, row, mp3)
        write_text_atomic(job.work_file(".json"), json.dumps(result))
        return result

    def close(self) -> None:
        for reader in (self._frames, self._audio):
            if reader is not None:
                reader.close()
