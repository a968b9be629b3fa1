"""``avlformer evaluate``'s work: pair the files, run each requested metric, collect one report. A metric that
cannot run here is skipped with the reason; AudioScore and CLIPScore read their clips (``ClipMedia``) as
docs/evaluation.md ("Clips") says, and a clip that cannot be read is left out of both and listed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from avlformer.data.audio import decode_audio
from avlformer.data.clip_ids import VIDEO_EXTENSIONS, clip_id_from_key
from avlformer.data.clip_media import AUDIO_SILENCE, clip_audio, read_clip_frames
from avlformer.data.media import MediaError
from avlformer.data.recipe import PreprocessRecipe
from avlformer.device import resolve_device
from avlformer.evaluation.coco_metrics import SCORER_OUTPUTS, caption_metrics, spice_missing_reason, \
    tools_missing_reason
from avlformer.evaluation.metric_models import MetricUnavailable
from avlformer.evaluation.references import PairedCaptions

log = logging.getLogger(__name__)

METRIC_CHOICES = ("bleu", "meteor", "rouge", "cider", "spice", "entity", "audio", "clip", "scenes")
MEDIA_METRICS = {"clip": "CLIPScore", "audio": "AudioScore"}  # group -> metric


@dataclass
class ModelPaths:
    """The flags of the metric models and media (``--t5-model`` sets ``t5_model``)."""
    t5_model: str | None = None
    nltk_data: str | None = None
    clip_model: str | None = None
    trilip_checkpoint: str | None = None
    trilip_passt_config: str | None = None
    video_dir: str | None = None
    audio_dir: str | None = None
    num_frames: int | None = None   # default: the recipe's stored frames
    recipe: str | None = None       # a checkpoint folder or preprocessor_config.json; default: the paper recipe
    device: str = "auto"
    scenes: str | None = None       # the scenes preset's attributes.json (the structured score's ground truth)


@dataclass
class EvaluationReport:
    metrics: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)         # metric group -> why
    unscored: dict[str, dict[str, str]] = field(default_factory=dict)  # metric -> {id: why}
    per_item: dict[str, dict] = field(default_factory=dict)       # metric -> {id: value}


AUDIO_SUFFIXES = (".mp3", ".wav", ".flac", ".m4a", ".aac", ".ogg")


class MissingMedia(LookupError):
    """No video (or audio) file for an id; the message names the id and the folder searched."""


def _find(folder: Path, stem: str, suffixes: tuple[str, ...], what: str, image_id: str) -> Path:
    for suffix in suffixes:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    raise MissingMedia(f"no {what} for id {image_id!r} in {folder} (looked for {stem}{{{','.join(suffixes)}}})")


class ClipMedia:
    def __init__(self, video_dir: str | os.PathLike, audio_dir: str | os.PathLike | None = None,
                 recipe: PreprocessRecipe | None = None, num_frames: int | None = None):
        """``num_frames`` (default: the recipe's stored frames) is how many frames the metrics see per clip."""
        self.video_dir = Path(video_dir)
        self.audio_dir = Path(audio_dir) if audio_dir is not None else None
        for folder in (self.video_dir, self.audio_dir):
            if folder is not None and not folder.is_dir():
                raise NotADirectoryError(f"{folder}: not a directory")
        recipe = recipe or PreprocessRecipe.paper()
        self.recipe = recipe if num_frames is None else dataclasses.replace(recipe, stored_frames=num_frames)

    def video_path(self, image_id: str) -> Path:
        return _find(self.video_dir, clip_id_from_key(image_id), VIDEO_EXTENSIONS, "video", image_id)

    def frames(self, image_id: str) -> np.ndarray:
        """uint8 (num_frames, H, W, 3), sampled uniformly over the clip at the recipe's shorter side."""
        return read_clip_frames(self.video_path(image_id), self.recipe).frames

    def audio(self, image_id: str) -> np.ndarray:
        """Mono float32 waveform at the recipe's sample rate, whole clip."""
        mp3 = None
        if self.audio_dir is not None:
            mp3 = _find(self.audio_dir, clip_id_from_key(image_id), AUDIO_SUFFIXES, "audio", image_id)
            if mp3.suffix.lower() != ".mp3":  # not a FAVDBench mp3: decoded as it is, resampled to the rate
                return decode_audio(mp3.read_bytes(), self.recipe.sample_rate, source=str(mp3))
        video = self.video_path(image_id)
        made = clip_audio(video, mp3, self.recipe)
        if made.source == AUDIO_SILENCE:  # the recipe's silence stands in for a model input, not for a score
            raise MediaError(video, "no usable audio (" + "; ".join(made.warnings) + ")")
        return decode_audio(made.mp3, self.recipe.sample_rate, source=str(mp3 or video))


def _run_coco(paired: PairedCaptions, groups: list[str], report: EvaluationReport) -> None:
    wanted = [g for g in groups if g in SCORER_OUTPUTS]
    if "spice" in wanted and (reason := spice_missing_reason()):
        report.skipped["spice"] = f"SPICE skipped: {reason}"
        wanted.remove("spice")
    if not wanted:
        return
    if reason := tools_missing_reason():
        for group in wanted:
            report.skipped[group] = f"{'/'.join(SCORER_OUTPUTS[group])} skipped: {reason}"
        return
    report.metrics.update(caption_metrics(paired.predictions, paired.references, scorers=tuple(wanted)))


def _run_entity(paired: PairedCaptions, paths: ModelPaths, device, report: EvaluationReport) -> None:
    from avlformer.evaluation.entity_score import EntityScorer
    from avlformer.evaluation.metric_models import load_pos_tagger, load_t5_encoder

    tagger = load_pos_tagger(paths.nltk_data)
    tokenizer, encoder = load_t5_encoder(paths.t5_model, device)
    result = EntityScorer(tokenizer, encoder, tagger, device).score(paired.predictions, paired.references,
                                                                    progress=True)
    report.per_item["EntityScore"] = result.per_item
    if result.unscored:
        report.unscored["EntityScore"] = {i: "no noun in the prediction or the reference" for i in result.unscored}
    if result.score is None:
        report.skipped["entity"] = nothing_scored("EntityScore", result.unscored, "each has no noun in the "
                                                  "prediction or in the reference")
    else:
        report.metrics["EntityScore"] = result.score


def nothing_scored(metric: str, unscored, why: str) -> str:
    """The reason a metric that ran has no value: not one item could be scored."""
    return f"{metric} could not be computed: none of the {len(unscored)} item(s) could be scored ({why})"


def _media_scorers(groups: list[str], paths: ModelPaths, device, report: EvaluationReport) -> dict:
    """Build the AudioScore/CLIPScore scorers that can run; record why the others cannot."""
    scorers = {}
    for group in [g for g in groups if g in MEDIA_METRICS]:
        try:
            if paths.video_dir is None:
                raise MetricUnavailable(f"{MEDIA_METRICS[group]} skipped: it scores captions against the clips; "
                                        "pass --video-dir DIR (the videos) and, for separate mp3s, --audio-dir DIR")
            scorers[group] = _build_media_scorer(group, paths, device)
        except MetricUnavailable as error:
            report.skipped[group] = str(error)
    return scorers


def _build_media_scorer(group: str, paths: ModelPaths, device):
    if group == "clip":
        from avlformer.evaluation.clip_score import ClipScorer
        from avlformer.evaluation.metric_models import load_clip

        return ClipScorer(*load_clip(paths.clip_model, "CLIPScore", device), device=device)
    from avlformer.evaluation.audio_score import AudioScorer, load_trilip, read_passt_config

    if paths.trilip_checkpoint is None:
        raise MetricUnavailable("AudioScore skipped: no TriLip model; download TriLip.bin (FAVDBench release "
                                "r-metric-score) and pass --trilip-checkpoint FILE with --clip-model DIR")
    trilip = load_trilip(paths.trilip_checkpoint, paths.clip_model, read_passt_config(paths.trilip_passt_config),
                         device)
    return AudioScorer(*trilip, device=device)


def load_recipe(path: str | None):
    """The preprocessing recipe the media for AudioScore/CLIPScore are made with (docs/data.md, "The
    preprocessing recipe"): a checkpoint folder's, a recipe file, or the paper recipe."""
    from avlformer.modeling.checkpoint import checkpoint_recipe

    if path is None:
        return PreprocessRecipe.paper()
    if Path(path).is_dir():
        return checkpoint_recipe(path)
    return PreprocessRecipe.load(path)


def _run_media(paired: PairedCaptions, scorers: dict, paths: ModelPaths, report: EvaluationReport) -> None:
    from tqdm.auto import tqdm

    media = ClipMedia(paths.video_dir, paths.audio_dir, recipe=load_recipe(paths.recipe),
                      num_frames=paths.num_frames)
    failures: dict[str, dict[str, str]] = {group: {} for group in scorers}
    unusable = (MissingMedia, MediaError, ValueError)  # ValueError: audio bytes that do not decode
    for image_id in tqdm(list(paired.predictions), desc="AudioScore/CLIPScore"):
        caption = paired.predictions[image_id]
        try:
            frames = media.frames(image_id)
        except unusable as error:
            for group in scorers:
                failures[group][image_id] = str(error)
            log.warning("%s", error)
            continue
        for group, scorer in scorers.items():
            try:
                if group == "clip":
                    scorer.score_item(image_id, frames, caption, paired.references[image_id])
                else:
                    scorer.score_item(image_id, frames, media.audio(image_id), caption)
            except unusable as error:
                failures[group][image_id] = str(error)
                log.warning("%s", error)
    for group, failed in failures.items():
        metric = MEDIA_METRICS[group]
        report.metrics.update(scorers[group].means())
        report.per_item[metric] = dict(scorers[group].per_item)
        if failed:
            report.unscored[metric] = failed
        if not report.per_item[metric]:
            report.skipped[group] = nothing_scored(metric, paired.predictions, "no usable video or audio; see "
                                                   "the warnings above")


def _run_scenes(paired: PairedCaptions, paths: ModelPaths, report: EvaluationReport) -> None:
    from avlformer.evaluation.scene_score import load_scene_truth, score_scenes

    if paths.scenes is None:
        report.skipped["scenes"] = ("scene score skipped: it compares captions with the generated scenes; pass "
                                    "--scenes DIR/attributes.json (written by `avlformer synth --preset scenes`)")
        return
    truth = load_scene_truth(paths.scenes)
    scenes = {ref_id: truth[clip_id_from_key(ref_id)] for ref_id in paired.predictions
              if clip_id_from_key(ref_id) in truth}
    unknown = {ref_id: f"no scene for it in {paths.scenes}" for ref_id in paired.predictions if ref_id not in scenes}
    if unknown:
        report.unscored["Scene"] = unknown
    if not scenes:
        return
    result = score_scenes(paired.predictions, scenes)
    report.metrics.update({f"Scene/{key}": value for key, value in {**result.groups, **result.scores}.items()})
    report.per_item["Scene"] = result.per_clip


def evaluate(paired: PairedCaptions, groups: list[str], paths: ModelPaths) -> EvaluationReport:
    """Run the metric ``groups`` (see METRIC_CHOICES) on paired captions."""
    unknown = sorted(set(groups) - set(METRIC_CHOICES))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {', '.join(METRIC_CHOICES)}")
    device = resolve_device(paths.device)
    report = EvaluationReport()
    _run_coco(paired, groups, report)
    if "entity" in groups:
        try:
            _run_entity(paired, paths, device, report)
        except MetricUnavailable as error:
            report.skipped["entity"] = str(error)
    if "scenes" in groups:
        _run_scenes(paired, paths, report)
    scorers = _media_scorers(groups, paths, device, report)
    if scorers:
        _run_media(paired, scorers, paths, report)
    return report


def missing_model_paths(paths: ModelPaths) -> list[str]:
    """Paths given on the command line (each field is its flag) that do not exist, reported before any work."""
    given = {name: value for name, value in asdict(paths).items() if isinstance(value, str) and name != "device"}
    return [f"--{name.replace('_', '-')} {value}" for name, value in given.items() if not Path(value).exists()]
