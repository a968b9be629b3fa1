"""The files a captioning run writes: ``<output>`` (COCO ``[{"image_id", "caption"}]``) and
``<output stem>.confidence.json`` (confidences, audio sources, decoding settings, failed videos)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from avlformer.atomic import write_text_atomic
from avlformer.inference.pipeline import CaptionRun
from avlformer.output_paths import output_file_problem


def sidecar_path(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(output.stem + ".confidence.json")


def check_output_path(output: str | os.PathLike, inputs: Sequence[str | os.PathLike] = (),
                      input_folders: Sequence[str | os.PathLike] = ()) -> None:
    """Raise ValueError (one line, naming the path) when the predictions or their sidecar cannot be written, or
    would overwrite an input (a file of ``inputs``, a file in ``input_folders``) or land inside a checkpoint."""
    output = Path(output)
    for path, flag in ((output, "--output"), (sidecar_path(output), "confidence sidecar")):
        if problem := output_file_problem(path, flag, inputs, "predictions.json", input_folders):
            raise ValueError(problem)


def write_predictions(run: CaptionRun, output: str | os.PathLike, checkpoint: str) -> Path:
    """Write the predictions and the sidecar; returns the sidecar's path."""
    output, sidecar = Path(output), sidecar_path(output)
    predictions = sorted(run.predictions, key=lambda p: p.video_id)
    write_text_atomic(output, json.dumps([{"image_id": p.video_id, "caption": p.caption} for p in predictions],
                                         indent=1))
    write_text_atomic(sidecar, json.dumps({
        "checkpoint": str(checkpoint),
        "decoding": {"num_beams": run.decoding.num_beams, "max_gen_length": run.decoding.max_length,
                     "length_penalty": run.decoding.length_penalty},
        "predictions": [{"image_id": p.video_id, "confidence": p.confidence, "audio_source": p.audio_source,
                         "video": p.path} for p in predictions],
        "failed": [{"image_id": f.video_id, "video": f.path, "error": f.message()} for f in run.failures],
        "warnings": run.warnings,
    }, indent=1))
    return sidecar
