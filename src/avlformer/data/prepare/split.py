"""Preparing one split: find its videos, plan one job per captioned clip, run (or reuse) the jobs, assemble the
split's files in the original's row order (docs/data.md, "Order"), the metadata yaml last: it marks completion.
A worker crash breaks the pool, so the jobs in flight are rerun one at a time and the crash names its file.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import json
import multiprocessing
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Callable

import yaml
from tqdm import tqdm

from avlformer.atomic import write_text_atomic
from avlformer.data.audio_hdf import write_audio_hdf
from avlformer.data.clip_ids import VIDEO_EXTENSIONS, clip_id_from_path, clip_key, id_problem, is_video_name
from avlformer.data.file_problems import FOLDER, entry_problem
from avlformer.data.prepare import clip_work
from avlformer.data.prepare.caption_sources import Captions
from avlformer.data.prepare.clip_work import ClipJob, PreviousOutputs
from avlformer.data.prepare.layout import ERROR, WARNING, Layout, Problem
from avlformer.data.prepare.outputs_record import OutputsRecord
from avlformer.data.recipe import recipe_path_for_yaml
from avlformer.data.tsv import TSVWriter

PARENT_POLL_SECONDS = 0.5


def _watch_parent(parent_pid: int) -> None:
    """Pool initializer: a daemon thread ends the worker once its parent is gone (re-parented to init)."""
    def exit_when_orphaned():
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)  # the parent is gone: nobody will collect this worker's results

    threading.Thread(target=exit_when_orphaned, daemon=True, name="parent-watch").start()


def _run_in_pool(jobs: list[ClipJob], workers: int, work: Callable[[ClipJob], dict], results: dict,
                 progress) -> list[ClipJob]:
    """Run ``jobs`` with at most ``2 * workers`` in flight. If a worker dies, return the jobs that were in flight
    then: one of them is the culprit."""
    pending = iter(jobs)
    in_flight: dict[futures.Future, ClipJob] = {}
    executor = futures.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                           initializer=_watch_parent, initargs=(os.getpid(),))
    try:
        while True:
            while len(in_flight) < 2 * workers:
                job = next(pending, None)
                if job is None:
                    break
                in_flight[executor.submit(work, job)] = job
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


def run_clips(jobs: list[ClipJob], workers: int, work: Callable[[ClipJob], dict],
              crashed: Callable[[ClipJob], dict], progress) -> dict[str, dict]:
    """``clip id -> work(job)`` for every job; ``crashed(job)`` for a job that crashed its worker."""
    results: dict[str, dict] = {}
    if workers <= 1:
        # In-process: simplest to debug; finished clips are on disk, so even a hard crash loses only the current one.
        for job in jobs:
            results[job.clip_id] = work(job)
            progress.update(1)
        return results
    remaining = jobs
    while remaining:
        suspects = _run_in_pool(remaining, workers, work, results, progress)
        for job in suspects:
            if job.clip_id not in results and _run_in_pool([job], 1, work, results, progress):
                results[job.clip_id] = crashed(job)
                progress.update(1)
        remaining = [job for job in remaining if job.clip_id not in results]
    return results


def _entry_problem(layout: Layout, path: Path) -> Problem | None:
    """Why a videos-folder entry that is not a readable plain file cannot be a clip (None: it is one)."""
    problem = entry_problem(path)
    if problem is None:
        return None
    if not is_video_name(path):
        return Problem(WARNING, layout.rel(path), f"ignored: {problem} (videos/<split>/ holds video files)",
                       layout.split)
    reason = "a folder named like a video file" if problem == FOLDER else problem
    return Problem(ERROR, layout.rel(path), f"{reason}; left out", layout.split, clip_id_from_path(path))


def find_videos(layout: Layout) -> tuple[dict[str, Path], list[Problem]]:
    """``id -> video path`` for one split. Entries that cannot be clips are reported: ids present with two
    extensions (ambiguous), ids that cannot be stored in a TSV, folders, broken links and link loops named like
    videos."""
    by_id: dict[str, list[Path]] = {}
    problems = []
    for path in sorted(layout.videos.iterdir()):
        if path.name.startswith("."):
            continue
        if (problem := _entry_problem(layout, path)) is not None:
            problems.append(problem)
            continue
        clip_id = clip_id_from_path(path)
        if not is_video_name(path):
            problems.append(Problem(WARNING, layout.rel(path), f"ignored: extension {path.suffix!r} is not one "
                                    f"of {', '.join(VIDEO_EXTENSIONS)}", layout.split, clip_id))
        elif (bad_id := id_problem(clip_id)) is not None:
            problems.append(Problem(ERROR, layout.rel(path), f"{bad_id}; left out", layout.split, clip_id))
        else:
            by_id.setdefault(clip_id, []).append(path)
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


def plan_split(layout: Layout, captions: Captions, videos: dict[str, Path], decoder_threads: int
               ) -> tuple[list[ClipJob], dict[str, list[str]], list[Problem]]:
    problems = []
    jobs, texts = [], {}
    recipe = layout.recipe()
    for clip_id in sorted(videos, key=lambda clip_id: f"{clip_id}.mp3"):  # the HDF5's order (module docstring)
        video = videos[clip_id]
        if clip_id not in captions.texts:
            if clip_id not in captions.rejected:
                problems.append(Problem(ERROR, layout.rel(video), "video has no caption; left out", layout.split,
                                        clip_id))
            continue
        mp3 = layout.mp3s / f"{clip_id}.mp3"
        jobs.append(ClipJob(split=layout.split, clip_id=clip_id, key=clip_key(layout.split, clip_id, video.suffix),
                            video=str(video), mp3=str(mp3) if mp3.is_file() else None, work_dir=str(layout.work),
                            data_dir=str(layout.data_dir), recipe=recipe, decoder_threads=decoder_threads))
        texts[clip_id] = captions.texts[clip_id]
    return jobs, texts, problems


def _finished_or_reused(layout: Layout, jobs: list[ClipJob], record: OutputsRecord) -> dict[str, dict]:
    """Results that need no decoding: finished in the work folder, else unchanged since the last complete run."""
    results = {job.clip_id: found for job in jobs if (found := clip_work.load_finished(job)) is not None}
    previous = PreviousOutputs(layout.frame_tsv, layout.audio_hdf,
                               record.splits.get(layout.yaml.stem, {}).get("clips", []))
    try:
        for job in jobs:
            if job.clip_id not in results and (found := previous.restore(job)) is not None:
                results[job.clip_id] = found
    finally:
        previous.close()
    return results


def prepare_split(layout: Layout, captions: Captions, videos: dict[str, Path], workers: int,
                  record: OutputsRecord, progress: bool = True) -> tuple[int, list[Problem]]:
    """Process and assemble one split; returns (clips written, problems)."""
    decoder_threads = max(1, (os.cpu_count() or 1) // workers)
    jobs, texts, problems = plan_split(layout, captions, videos, decoder_threads)
    layout.work.mkdir(parents=True, exist_ok=True)
    results = _finished_or_reused(layout, jobs, record)
    todo = [job for job in jobs if job.clip_id not in results]
    with tqdm(total=len(jobs), initial=len(results), desc=f"prepare {layout.split}", unit="clip",
              disable=not progress) as bar:
        # Looked up on the module at call time, so tests can stand in for it.
        results.update(run_clips(todo, workers, clip_work.process_clip, clip_work.crashed_result, bar))
    for job in jobs:
        problems += [Problem(**{**problem, "split": layout.split, "id": job.clip_id})
                     for problem in results[job.clip_id]["problems"]]
    kept = [(job, texts[job.clip_id], results[job.clip_id]) for job in jobs if results[job.clip_id]["ok"]]
    if not kept:
        problems.append(Problem(ERROR, layout.rel(layout.videos), "no clip of this split could be prepared; "
                                "nothing written", layout.split))
        return 0, problems
    assemble_split(layout, kept, record)
    shutil.rmtree(layout.work, ignore_errors=True)
    with contextlib.suppress(OSError):  # only succeeds once no split has work left
        layout.work.parent.rmdir()
    return len(kept), problems


def coco_references(keys: list[str], texts: list[list[str]]) -> dict:
    """COCO captions dict as the original's evaluation reads it (docs/upstream.md §1.5); one annotation per
    reference."""
    pairs = [(key, text) for key, references in zip(keys, texts) for text in references]
    return {
        "annotations": [{"image_id": key, "caption": text, "id": index} for index, (key, text) in enumerate(pairs)],
        "images": [{"id": key, "file_name": key} for key in keys],
        "type": "captions", "info": "dummy", "licenses": "dummy",
    }


def metadata_yaml(layout: Layout) -> dict:
    """Paths as the original resolves them: ``img`` and ``audio`` against the data dir, the rest against
    metadata/."""
    return {
        "caption": layout.meta("caption.tsv").name,
        "caption_coco_format": layout.meta("caption_coco_format.json").name,
        "caption_linelist": layout.meta("caption.linelist.tsv").name,
        "img": layout.rel(layout.frame_tsv),
        "label": layout.meta("label.tsv").name,
        "audio": layout.rel(layout.audio_hdf),
    }


def write_tsv_rows(path: Path, rows: list[list[str]]) -> None:
    with TSVWriter(path) as writer:
        for row in rows:
            writer.write(row)


def tsv_bytes(rows: list[list[str]]) -> bytes:
    """The exact bytes ``write_tsv_rows`` writes (to record a file's hash before it exists)."""
    return b"".join(("\t".join(row) + "\n").encode("utf-8") for row in rows)


def assemble_split(layout: Layout, clips: list[tuple[ClipJob, str, dict]], record: OutputsRecord) -> None:
    """Write every output file of the split; ``clips`` are (job, references, work result) in output order. The
    caption TSV row holds every reference and the linelist names each (row, reference) pair, so training sees
    each reference as an item."""
    with TSVWriter(layout.frame_tsv) as writer:
        for job, _, _ in clips:
            writer.write(job.work_file(".row").read_bytes().split(b"\t"))
    write_audio_hdf(layout.audio_hdf, [job.clip_id for job, _, _ in clips],
                    (job.work_file(".mp3").read_bytes() for job, _, _ in clips))
    keys = [job.key for job, _, _ in clips]
    texts = [text for _, text, _ in clips]
    caption_rows = [[key, json.dumps([{"caption": text} for text in references])]
                    for key, references in zip(keys, texts)]
    # Recorded before the caption TSV exists, so a crash in between can never make our output look like the
    # user's released file.
    record.will_write(layout.meta("caption.tsv"), tsv_bytes(caption_rows))
    record.splits[layout.yaml.stem] = {"clips": [{"row": row, "result": result}
                                                 for row, (_, _, result) in enumerate(clips)]}
    record.save()
    write_tsv_rows(layout.meta("caption.tsv"), caption_rows)
    write_tsv_rows(layout.meta("label.tsv"), caption_rows)
    write_tsv_rows(layout.meta("caption.linelist.tsv"), [[str(index), str(k)] for index, references
                                                         in enumerate(texts) for k in range(len(references))])
    write_tsv_rows(layout.meta("img.tsv"), [[job.key, layout.rel(job.video)] for job, _, _ in clips])
    write_text_atomic(layout.meta("caption_coco_format.json"), json.dumps(coco_references(keys, texts)))
    layout.recipe().save(recipe_path_for_yaml(layout.yaml))
    write_text_atomic(layout.yaml, yaml.safe_dump(metadata_yaml(layout), sort_keys=False))
