"""Captioning videos with a trained model: file -> model input -> caption, shared by `avlformer infer`,
`avlformer caption` and the demo.

Frames take **the same path as training data**: `media.sample_frames` picks ``stored_frames`` (32) frames at
``short_side`` (256) exactly as `avlformer prepare` does, each frame goes through the same JPEG round trip the frame
TSV applies, and `transforms.clip_from_frames` then selects the model's ``num_frames`` and centre-crops to its
``image_size``, as the evaluation loader does. (Upstream decoded full-resolution frames and resized them
differently at inference than in training.)

Audio comes from ``<audio_dir>/<id>.mp3`` when an audio folder is given (FAVDBench layout), else from the video's
own audio stream (extracted to mono 32 kHz mp3, as prepare does); a video with no audio gets silence and a
warning. Evaluation never applies the training-time gain/roll augmentations, so the same input always gives the
same caption.

Predictions are identified by the video's **file stem** (``videos/test/abc.mp4`` -> ``"abc"``), the id used in
the FAVDBench captions files; `avlformer evaluate` matches them against references keyed the same way.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from avlformer.data import audio as audio_io
from avlformer.data import media
from avlformer.data.prepare import encode_jpeg_b64
from avlformer.data.tokenizer import decode_caption, load_tokenizer
from avlformer.data.transforms import clip_from_frames

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")
STORED_FRAMES = 32      # what `avlformer prepare` keeps per clip
STORED_SHORT_SIDE = 256


@dataclass
class InputSpec:
    """What the model expects, from its config: frames per clip, crop size, audio samples and rate."""

    num_frames: int
    image_size: int
    clip_samples: int
    sample_rate: int = audio_io.SAMPLE_RATE
    stored_frames: int = STORED_FRAMES
    short_side: int = STORED_SHORT_SIDE


@dataclass
class ClipInput:
    video_id: str
    path: str
    frames: torch.Tensor          # float32 (T, 3, H, W), normalised
    audio: torch.Tensor           # float32 (1, S)
    audio_source: str             # "mp3", "video" or "silence"
    warnings: list[str] = field(default_factory=list)


@dataclass
class ClipFailure:
    video_id: str
    path: str
    error: str


@dataclass
class Prediction:
    video_id: str
    caption: str
    confidence: float
    audio_source: str
    path: str


@dataclass
class DecodingOptions:
    num_beams: int = 1
    max_length: int | None = None
    length_penalty: float = 1.0

    def __post_init__(self):
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_gen_length must be >= 1, got {self.max_length}")


# ----------------------------------------------------------------------------------------------------- inputs

def list_videos(folder: str | os.PathLike) -> list[Path]:
    """Every video file (by extension, any case) directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: video folder not found")
    videos = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    if not videos:
        raise FileNotFoundError(f"{folder}: no video files ({', '.join(VIDEO_EXTENSIONS)})")
    return videos


def jpeg_round_trip(frames: np.ndarray) -> list[bytes]:
    """uint8 (T, H, W, 3) -> base64 JPEGs, encoded exactly as `avlformer prepare` stores them in a frame TSV."""
    return [encode_jpeg_b64(frame) for frame in frames]


def load_frames(path: str | os.PathLike, spec: InputSpec) -> torch.Tensor:
    frames = media.sample_frames(path, spec.stored_frames, spec.short_side)
    return clip_from_frames(jpeg_round_trip(frames), num_frames=spec.num_frames, image_size=spec.image_size,
                            train=False, source=str(path))


def load_audio(video: Path, audio_dir: Path | None, spec: InputSpec) -> tuple[torch.Tensor, str, list[str]]:
    """(waveform (1, S), where it came from, warnings)."""
    notes = []
    if audio_dir is not None:
        mp3 = audio_dir / f"{video.stem}.mp3"
        if mp3.is_file():
            wave = audio_io.load_clip(mp3.read_bytes(), clip_samples=spec.clip_samples,
                                      sample_rate=spec.sample_rate, source=str(mp3))
            return wave, "mp3", notes
        notes.append(f"{mp3}: not found; using the video's own audio")
    try:
        data = media.extract_audio_mp3(video, spec.sample_rate)
    except media.NoAudioStreamError as error:
        notes.append(f"{error}; using silence")
        return torch.zeros(1, spec.clip_samples), "silence", notes
    wave = audio_io.load_clip(data, clip_samples=spec.clip_samples, sample_rate=spec.sample_rate, source=str(video))
    return wave, "video", notes


def load_clip_input(video: str | os.PathLike, audio_dir: str | os.PathLike | None, spec: InputSpec) -> ClipInput:
    video = Path(video)
    frames = load_frames(video, spec)
    wave, source, notes = load_audio(video, Path(audio_dir) if audio_dir else None, spec)
    return ClipInput(video_id=video.stem, path=str(video), frames=frames, audio=wave, audio_source=source,
                     warnings=notes)


class VideoFolderDataset(Dataset):
    """One item per video; a video that cannot be read becomes a ClipFailure instead of stopping the run."""

    def __init__(self, videos: Sequence[Path], audio_dir: str | os.PathLike | None, spec: InputSpec,
                 silence_audio: bool = False):
        self.videos = list(videos)
        self.audio_dir = audio_dir
        self.spec = spec
        self.silence_audio = silence_audio

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> ClipInput | ClipFailure:
        video = self.videos[index]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # per-frame decode warnings are summarised by the failure report
                item = load_clip_input(video, self.audio_dir, self.spec)
        except (media.MediaError, ValueError, OSError, RuntimeError) as error:
            return ClipFailure(video_id=video.stem, path=str(video), error=str(error))
        if self.silence_audio:
            item.audio = torch.zeros_like(item.audio)
            item.audio_source = "silence"
        return item


def collate_clips(items: list[ClipInput | ClipFailure]) -> tuple[list[ClipInput], list[ClipFailure]]:
    return [i for i in items if isinstance(i, ClipInput)], [i for i in items if isinstance(i, ClipFailure)]


# ----------------------------------------------------------------------------------------------------- model

def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return device


def input_spec_from_config(config, stored_frames: int = STORED_FRAMES, short_side: int = STORED_SHORT_SIDE
                           ) -> InputSpec:
    """The model's expected input sizes, read from its AVLFormerConfig; ``stored_frames``/``short_side`` describe
    how the training data was prepared (`avlformer prepare --num-frames/--image-size`)."""
    return InputSpec(num_frames=int(config.num_frames), image_size=int(config.image_size),
                     clip_samples=int(config.audio.clip_samples), sample_rate=int(config.audio.sample_rate),
                     stored_frames=stored_frames, short_side=short_side)


def checkpoint_decoding(config) -> DecodingOptions:
    """Decoding settings stored with the checkpoint (command-line flags override them)."""
    return DecodingOptions(num_beams=int(getattr(config, "num_beams", 1) or 1),
                           max_length=getattr(config, "max_gen_length", None),
                           length_penalty=float(getattr(config, "length_penalty", 1.0)))


def merge_decoding(base: DecodingOptions, num_beams: int | None = None, max_length: int | None = None,
                   length_penalty: float | None = None) -> DecodingOptions:
    return DecodingOptions(num_beams=base.num_beams if num_beams is None else num_beams,
                           max_length=base.max_length if max_length is None else max_length,
                           length_penalty=base.length_penalty if length_penalty is None else length_penalty)


@torch.inference_mode()
def caption_batch(model, clips: list[ClipInput], decoding: DecodingOptions, device: torch.device,
                  tokenizer=None) -> list[Prediction]:
    frames = torch.stack([c.frames for c in clips]).to(device, non_blocking=True)
    audio = torch.stack([c.audio for c in clips]).to(device, non_blocking=True)
    out = model.generate(frames, audio, num_beams=decoding.num_beams, max_length=decoding.max_length,
                         length_penalty=decoding.length_penalty)
    tokenizer = tokenizer or load_tokenizer()
    token_ids = out.token_ids.cpu().tolist()
    confidence = out.confidence.float().cpu().tolist()
    return [Prediction(video_id=c.video_id, caption=decode_caption(ids, tokenizer), confidence=float(conf),
                       audio_source=c.audio_source, path=c.path)
            for c, ids, conf in zip(clips, token_ids, confidence)]


@dataclass
class CaptionRun:
    predictions: list[Prediction]
    failures: list[ClipFailure]
    warnings: list[str]
    decoding: DecodingOptions


def caption_videos(model, videos: Iterable[str | os.PathLike], spec: InputSpec, decoding: DecodingOptions,
                   device: torch.device, audio_dir: str | os.PathLike | None = None, batch_size: int = 8,
                   num_workers: int = 0, silence_audio: bool = False, progress: bool = True) -> CaptionRun:
    """Caption every video; unreadable ones are collected as failures and the rest still captioned.
    ``silence_audio`` replaces every soundtrack with silence (the demo's ablation)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    videos = [Path(v) for v in videos]
    dataset = VideoFolderDataset(videos, audio_dir, spec, silence_audio=silence_audio)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_clips,
                        pin_memory=device.type == "cuda")
    model.eval()
    tokenizer = load_tokenizer()
    run = CaptionRun(predictions=[], failures=[], warnings=[], decoding=decoding)
    with tqdm(total=len(videos), desc="caption", unit="video", disable=not progress) as bar:
        for clips, failures in loader:
            for failure in failures:
                log.warning("skipping %s", failure.error)
            run.failures.extend(failures)
            for clip in clips:
                run.warnings.extend(clip.warnings)
                for note in clip.warnings:
                    log.warning("%s", note)
            if clips:
                run.predictions.extend(caption_batch(model, clips, decoding, device, tokenizer))
            bar.update(len(clips) + len(failures))
    return run


def check_unique_ids(videos: Sequence[Path]) -> None:
    """File stems are the prediction ids, so a.mp4 and a.mkv in one folder would collide."""
    seen: dict[str, Path] = {}
    for video in videos:
        if video.stem in seen:
            raise ValueError(f"{video}: same id {video.stem!r} as {seen[video.stem]}; prediction ids are file stems")
        seen[video.stem] = video


# ----------------------------------------------------------------------------------------------------- outputs

def coco_predictions(predictions: Sequence[Prediction]) -> list[dict]:
    return [{"image_id": p.video_id, "caption": p.caption} for p in sorted(predictions, key=lambda p: p.video_id)]


def sidecar_path(output: str | os.PathLike) -> Path:
    output = Path(output)
    return output.with_name(output.stem + ".confidence.json")


def sidecar_payload(run: CaptionRun, checkpoint: str) -> dict:
    return {
        "checkpoint": str(checkpoint),
        "decoding": {"num_beams": run.decoding.num_beams, "max_gen_length": run.decoding.max_length,
                     "length_penalty": run.decoding.length_penalty},
        "predictions": [{"image_id": p.video_id, "confidence": p.confidence, "audio_source": p.audio_source,
                         "video": p.path} for p in sorted(run.predictions, key=lambda p: p.video_id)],
        "failed": [{"image_id": f.video_id, "video": f.path, "error": f.error} for f in run.failures],
        "warnings": run.warnings,
    }
