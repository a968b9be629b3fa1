"""Captioning videos with a trained model: file -> model input -> caption, shared by `avlformer infer`,
`avlformer caption`, the Python API, `serve` and the demo. A file gets the tensors the evaluation loader would give
after `prepare` (docs/api.md); predictions carry the clip id (``videos/test/abc.mp4`` -> ``abc``), the path as the
caller spelled it and its position in the caller's list.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from avlformer.data import audio as audio_io
from avlformer.data import media
from avlformer.data.clip_ids import VIDEO_EXTENSIONS, clip_id_from_path, id_problem, is_video_name
from avlformer.data.clip_media import clip_audio, encode_frames, read_clip_frames
from avlformer.data.file_problems import FOLDER, entry_problem
from avlformer.data.recipe import PreprocessRecipe
from avlformer.data.tokenizer import decode_caption, load_tokenizer
from avlformer.data.transforms import clip_from_frames
from avlformer.device import resolve_device
from avlformer.inference.cpu_decoding import decoding_steps_at_one_thread

log = logging.getLogger(__name__)

VideoPath = str | os.PathLike


@dataclass(frozen=True)
class InputSpec:
    num_frames: int
    image_size: int
    clip_samples: int
    sample_rate: int
    recipe: PreprocessRecipe


@dataclass
class ClipInput:
    index: int                    # position in the caller's list of videos
    video_id: str
    path: str                     # as the caller spelled it
    frames: torch.Tensor          # uint8 (T, 3, H, W); the model normalises it (transforms.frames_for_model)
    audio: torch.Tensor           # float32 (1, S)
    audio_source: str             # "mp3", "video" or "silence"
    warnings: list[str] = field(default_factory=list)


@dataclass
class ClipFailure:
    index: int
    video_id: str
    path: str
    error: str                    # the reason, without the path

    def message(self) -> str:
        return f"{display_path(self.path)}: {self.error}"


@dataclass
class Prediction:
    index: int
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
            raise ValueError(f"--num-beams {self.num_beams}: the beam width (num_beams) must be >= 1")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"--max-gen-length {self.max_length}: must be >= 2 ([CLS] + one token)")
        if not math.isfinite(self.length_penalty):
            raise ValueError(f"--length-penalty {self.length_penalty}: must be a finite number")


def check_loader_options(batch_size: int, num_workers: int) -> None:
    if batch_size < 1:
        raise ValueError(f"--batch-size {batch_size}: must be >= 1")
    if num_workers < 0:
        raise ValueError(f"--num-workers {num_workers}: must be >= 0")


def display_path(path: str) -> str:
    """A path as one printable line: backslashes and unprintable characters escaped, undecodable bytes as \\xNN."""
    out = []
    for char in path:
        if char == "\\":
            out.append("\\\\")
        elif "\udc80" <= char <= "\udcff":  # a byte os.fsdecode could not decode
            out.append(f"\\x{ord(char) - 0xdc00:02x}")
        elif not char.isprintable():
            out.append(char.encode("unicode_escape").decode("ascii"))
        else:
            out.append(char)
    return "".join(out)


# ----------------------------------------------------------------------------------------------------- inputs

@dataclass
class VideoListing:
    videos: list[Path]
    problems: list[ClipFailure]   # entries named like videos that cannot be captioned


def is_path(value) -> bool:
    return isinstance(value, (str, os.PathLike))


def video_label(video, index: int) -> str:
    """A video path as given, or ``<frames N>`` for in-memory frames."""
    return os.fspath(video) if is_path(video) else f"<frames {index}>"


def not_a_video_file(path: Path) -> str | None:
    """Why ``path`` (named like a video) cannot be opened as one, or None."""
    problem = entry_problem(path)
    return "is a folder, not a video file" if problem == FOLDER else problem


def list_videos(folder: VideoPath) -> VideoListing:
    """Every video (by extension, any case) directly in ``folder``, sorted by name; entries named like videos that
    are not readable files or whose name cannot be a clip id are listed as problems."""
    folder = Path(folder)
    if folder.is_file():
        raise ValueError(f"{display_path(str(folder))}: is a file, not a folder of videos (for single files use "
                         f"`avlformer caption --model CKPT FILE...`)")
    if not folder.is_dir():
        raise FileNotFoundError(f"{display_path(str(folder))}: video folder not found")
    videos, problems = [], []
    for path in sorted(p for p in folder.iterdir() if is_video_name(p)):
        reason = not_a_video_file(path) or id_problem(clip_id_from_path(path))
        if reason:
            problems.append(ClipFailure(index=-1, video_id=clip_id_from_path(path), path=str(path), error=reason))
        else:
            videos.append(path)
    if not videos and not problems:
        raise FileNotFoundError(f"{display_path(str(folder))}: no video files ({', '.join(VIDEO_EXTENSIONS)})")
    return VideoListing(videos, problems)


def check_unique_ids(videos: Sequence[Path]) -> None:
    """Clip ids are the prediction ids, so a.mp4 and a.mkv in one folder would collide."""
    seen: dict[str, Path] = {}
    for video in videos:
        clip_id = clip_id_from_path(video)
        if clip_id in seen:
            raise ValueError(f"{display_path(str(video))}: same id {clip_id!r} as {display_path(str(seen[clip_id]))}"
                             f"; prediction ids are file names without the extension")
        seen[clip_id] = video


def load_frames(video: VideoPath, spec: InputSpec) -> tuple[torch.Tensor, float]:
    """(frames as the evaluation loader gives them, the video's duration in seconds)."""
    sample = read_clip_frames(video, spec.recipe)
    frames = clip_from_frames(encode_frames(sample.frames, spec.recipe), num_frames=spec.num_frames,
                              image_size=spec.image_size, train=False, source=str(video))
    return frames, sample.info.duration


def load_audio(video: VideoPath, mp3: Path | None, spec: InputSpec,
               video_seconds: float | None = None) -> tuple[torch.Tensor, str, list[str]]:
    """(waveform (1, S), where it came from, warnings), as the evaluation loader decodes prepare's mp3."""
    found = clip_audio(video, mp3, spec.recipe, video_seconds=video_seconds)
    wave = audio_io.load_clip(found.mp3, clip_samples=spec.clip_samples, sample_rate=spec.sample_rate,
                              source=str(mp3 if found.source == "mp3" else video))
    return wave, found.source, list(found.warnings)


def load_clip_input(video: VideoPath, audio_dir: VideoPath | None, spec: InputSpec, index: int = 0, *,
                    mp3: Path | None = None, silence: bool = False) -> ClipInput:
    """One video's model input. Audio: ``mp3`` when given, else ``<audio_dir>/<id>.mp3`` when it exists, else
    the video's own; ``silence``: zeros (the demo's ablation)."""
    path = Path(video)
    clip_id = clip_id_from_path(path)
    notes = []
    if mp3 is None and audio_dir is not None and not silence:
        candidate = Path(audio_dir) / f"{clip_id}.mp3"
        if candidate.is_file():
            mp3 = candidate
        else:
            notes.append(f"{candidate}: not found; using the video's own audio")
    frames, seconds = load_frames(path, spec)
    if silence:
        wave, source = torch.zeros(1, spec.clip_samples), "silence"
    else:
        wave, source, audio_notes = load_audio(path, mp3, spec, video_seconds=seconds)
        notes += audio_notes
    return ClipInput(index=index, video_id=clip_id, path=os.fspath(video), frames=frames, audio=wave,
                     audio_source=source, warnings=[f"{display_path(os.fspath(video))}: {n}" for n in notes])


class VideoFolderDataset(Dataset):
    """One item per video; a video that cannot be read becomes a ClipFailure instead of stopping the run."""

    def __init__(self, videos: Sequence[VideoPath], audio_dir: VideoPath | None, spec: InputSpec,
                 silence_audio: bool = False):
        self.videos = list(videos)
        self.audio_dir = audio_dir
        self.spec = spec
        self.silence_audio = silence_audio

    def __len__(self) -> int:
        return len(self.videos)

    def load(self, index: int) -> ClipInput:
        return load_clip_input(self.videos[index], self.audio_dir, self.spec, index, silence=self.silence_audio)

    def __getitem__(self, index: int) -> ClipInput | ClipFailure:
        video = self.videos[index]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # per-frame decode warnings are summarised by the failure report
                return self.load(index)
        except media.MediaError as error:
            reason = error.reason
        except (ValueError, TypeError, OSError, RuntimeError) as error:
            reason = str(error)
        label = video_label(video, index)
        return ClipFailure(index, clip_id_from_path(label) if is_path(video) else label, label, reason)


def collate_clips(items: list[ClipInput | ClipFailure]) -> tuple[list[ClipInput], list[ClipFailure]]:
    return [i for i in items if isinstance(i, ClipInput)], [i for i in items if isinstance(i, ClipFailure)]


# ----------------------------------------------------------------------------------------------------- model

@dataclass
class LoadedModel:
    """A checkpoint ready to caption: the model in eval mode, its config, device, recipe and tokenizer."""

    model: torch.nn.Module
    config: object
    device: torch.device
    recipe: PreprocessRecipe
    tokenizer: object

    @property
    def spec(self) -> InputSpec:
        """The sizes the evaluation loader uses for this model."""
        config = self.config
        return InputSpec(num_frames=int(config.num_frames), image_size=int(config.image_size),
                         clip_samples=int(config.audio.clip_samples), sample_rate=int(config.audio.sample_rate),
                         recipe=self.recipe)


def load_for_inference(checkpoint: VideoPath, device_name: str = "auto") -> LoadedModel:
    """Our checkpoint folder, an upstream folder, a released ``model.bin`` or a Hub model id, with its recipe and
    vocabulary."""
    from avlformer.hub import AVLFormer

    device = resolve_device(device_name)
    return loaded_model(AVLFormer.from_pretrained(checkpoint, device=device), device)


def loaded_model(model, device: torch.device | None = None) -> LoadedModel:
    """A ``hub.AVLFormer`` ready to caption on ``device`` (default: where its weights are)."""
    device = device or next(model.parameters()).device
    model.to(device).eval()
    vocab_dir = getattr(model, "vocab_dir", None)
    return LoadedModel(model=model, config=model.config, device=device,
                       recipe=getattr(model, "recipe", None) or PreprocessRecipe.paper(),
                       tokenizer=load_tokenizer(str(vocab_dir) if vocab_dir else None))


def check_decoding(decoding: DecodingOptions, config) -> None:
    """A caption cannot be longer than the model has text positions."""
    limit = int(config.text.max_position_embeddings)
    if decoding.max_length is not None and decoding.max_length > limit:
        raise ValueError(f"--max-gen-length {decoding.max_length}: the model has only {limit} text positions "
                         f"(text.max_position_embeddings); use 2..{limit}")


def checkpoint_decoding(config, num_beams: int | None = None, max_length: int | None = None,
                        length_penalty: float | None = None) -> DecodingOptions:
    """The decoding settings stored with the checkpoint, overridden where a value is given, checked against the
    model."""
    decoding = DecodingOptions(num_beams=config.num_beams if num_beams is None else num_beams,
                               max_length=config.max_gen_length if max_length is None else max_length,
                               length_penalty=config.length_penalty if length_penalty is None else length_penalty)
    check_decoding(decoding, config)
    return decoding


@torch.inference_mode()
def caption_batch(model, clips: list[ClipInput], decoding: DecodingOptions, device: torch.device,
                  tokenizer) -> list[Prediction]:
    frames = torch.stack([c.frames for c in clips]).to(device, non_blocking=True)
    audio = torch.stack([c.audio for c in clips]).to(device, non_blocking=True)
    # The BERT decoder's steps at one thread (its LM head is ``cls``); a Hugging Face LM decodes as it is.
    head = getattr(model.part("text"), "cls", None)
    steps = (decoding_steps_at_one_thread(model.part("text"), head) if device.type == "cpu" and head is not None
             else contextlib.nullcontext())
    with steps:
        out = model.generate(frames, audio, num_beams=decoding.num_beams, max_length=decoding.max_length,
                             length_penalty=decoding.length_penalty)
    token_ids = out.token_ids.cpu().tolist()
    confidence = out.confidence.float().cpu().tolist()
    return [Prediction(index=c.index, video_id=c.video_id, caption=decode_caption(ids, tokenizer),
                       confidence=float(conf), audio_source=c.audio_source, path=c.path)
            for c, ids, conf in zip(clips, token_ids, confidence)]


@dataclass
class CaptionRun:
    predictions: list[Prediction]   # in the order of the videos given
    failures: list[ClipFailure]
    warnings: list[str]
    decoding: DecodingOptions


def caption_videos(loaded: LoadedModel, videos: Sequence[VideoPath], decoding: DecodingOptions, *,
                   audio_dir: VideoPath | None = None, batch_size: int = 8, num_workers: int = 0,
                   silence_audio: bool = False, progress: bool = True, desc: str = "caption") -> CaptionRun:
    """Caption every video; unreadable ones are collected as failures and the rest still captioned."""
    dataset = VideoFolderDataset(videos, audio_dir, loaded.spec, silence_audio=silence_audio)
    run = CaptionRun(predictions=[], failures=[], warnings=[], decoding=decoding)
    with tqdm(total=len(dataset), desc=desc, unit="video", disable=not progress) as bar:
        for clips, predictions, failures in caption_dataset(loaded, dataset, decoding, batch_size=batch_size,
                                                            num_workers=num_workers):
            for failure in failures:
                log.warning("skipping %s", failure.message())
            run.failures.extend(failures)
            for clip in clips:
                run.warnings.extend(clip.warnings)
                for note in clip.warnings:
                    log.warning("%s", note)
            run.predictions.extend(predictions)
            bar.update(len(clips) + len(failures))
    return run


def caption_dataset(loaded: LoadedModel, dataset: Dataset, decoding: DecodingOptions, *, batch_size: int = 8,
                    num_workers: int = 0) -> Iterator[tuple[list[ClipInput], list[Prediction], list[ClipFailure]]]:
    """Caption a dataset of ClipInput / ClipFailure items, yielding (inputs, their predictions, failures) batch by
    batch: the one captioning loop."""
    check_loader_options(batch_size, num_workers)
    check_decoding(decoding, loaded.config)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_clips,
                        pin_memory=loaded.device.type == "cuda")
    loaded.model.eval()
    for clips, failures in loader:
        predictions = caption_batch(loaded.model, clips, decoding, loaded.device, loaded.tokenizer) if clips else []
        yield clips, predictions, failures
