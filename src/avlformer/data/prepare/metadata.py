"""Assembling a prepared split from its work folder (docs/upstream.md §1.3-§1.5). Every TSV gets its ``.lineidx``
and ``.lineidx.8b`` (the original's reader never builds one); the metadata yaml comes last: it marks completion.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from avlformer.atomic import write_text_atomic
from avlformer.data.audio_hdf import write_audio_hdf
from avlformer.data.prepare.clip_work import ClipJob
from avlformer.data.prepare.layout import Layout
from avlformer.data.prepare.outputs_record import OutputsRecord
from avlformer.data.recipe import recipe_path_for_yaml
from avlformer.data.tsv import TSVWriter


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
