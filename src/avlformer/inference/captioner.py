"""Captioning from Python without assembling tensors: ``avlformer.caption`` and ``Captioner`` (docs/api.md).
A failed video gives ``error`` set and ``caption`` None, never a silent skip.
"""

from __future__ import annotations

import dataclasses
import io
import wave as wave_module
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import av
import numpy as np
import torch

from avlformer.data import audio as audio_io
from avlformer.data import media, media_audio
from avlformer.data.clip_ids import clip_id_from_path
from avlformer.data.clip_media import AUDIO_SILENCE, encode_frames, silent_clip_audio
from avlformer.data.transforms import clip_from_frames
from avlformer.device import resolve_device
from avlformer.inference import pipeline

AUDIO_FROM_ARRAY = "array"


@dataclass
class CaptionResult:
    """One video's caption (``caption`` None and ``error`` set when it could not be captioned)."""

    index: int                     # position in the list given
    video: str                     # the path as given, or "<frames N>" for in-memory frames
    caption: str | None
    confidence: float | None       # mean token probability of the caption, 0..1
    audio_source: str | None       # "mp3", "video", "array" or "silence"
    warnings: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {"video": self.video, "caption": self.caption, "confidence": self.confidence,
                "audio_source": self.audio_source, "warnings": list(self.warnings), "error": self.error}


# ----------------------------------------------------------------------------------------------- in-memory inputs

def _as_numpy(value, what: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{what}: expected a path, a numpy array or a torch tensor, got {type(value).__name__}")
    return value


def frames_from_array(frames, spec: pipeline.InputSpec, what: str = "frames") -> torch.Tensor:
    """All frames of a clip, uint8 (T, H, W, 3) at a constant rate -> the model's (num_frames, 3, H, W) input,
    sampled, resized and JPEG encoded by the recipe as `prepare` does a video's."""
    array = _as_numpy(frames, what)
    if array.ndim != 4 or array.shape[-1] != 3 or array.shape[0] < 1:
        raise ValueError(f"{what}: expected uint8 frames shaped (T, H, W, 3), got shape {tuple(array.shape)}")
    if array.dtype != np.uint8:
        raise ValueError(f"{what}: expected uint8 RGB values 0..255, got dtype {array.dtype}")
    total, stored = array.shape[0], spec.recipe.stored_frames
    # At a constant rate of one frame per unit of time, the frame on screen at instant t is frame floor(t).
    picks = np.minimum(media.sample_times(0.0, total, stored).astype(int), total - 1)
    sampled = np.stack([media.display_rgb(av.VideoFrame.from_ndarray(np.ascontiguousarray(array[i]),
                                                                      format="rgb24"), spec.recipe.short_side)
                        for i in picks])
    return clip_from_frames(encode_frames(sampled, spec.recipe), num_frames=spec.num_frames,
                            image_size=spec.image_size, train=False, source=what)


def _wav_bytes(mono: np.ndarray, sample_rate: int) -> bytes:
    buffer = io.BytesIO()
    with wave_module.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(sample_rate)
        writer.writeframes((np.clip(mono, -1.0, 1.0) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def audio_from_array(waveform, sample_rate: int, spec: pipeline.InputSpec, what: str = "audio") -> torch.Tensor:
    """A float waveform (S,) or (channels, S) in -1..1 at ``sample_rate`` -> the model's (1, S) input, through the
    mp3 a video's soundtrack would give."""
    array = _as_numpy(waveform, what).astype(np.float32, copy=False)
    if array.ndim not in (1, 2) or array.shape[-1] < 1:
        raise ValueError(f"{what}: expected a waveform shaped (samples,) or (channels, samples), "
                         f"got shape {tuple(array.shape)}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what}: waveform holds NaN or infinite values")
    if problem := media_audio.waveform_problem(array.shape[-1], sample_rate):
        raise ValueError(f"{what}: {problem}")
    sample_rate = int(sample_rate)
    mono = array if array.ndim == 1 else array.mean(axis=0)
    recipe = spec.recipe
    if sample_rate == recipe.sample_rate:
        mp3 = media_audio.encode_mp3(mono, recipe.sample_rate, recipe.mp3_bitrate)
    else:  # through the resampler a video's own audio goes through (lossless 16-bit container in between)
        mp3 = media_audio.extract_audio(_wav_bytes(mono, sample_rate), recipe.sample_rate, recipe.mp3_bitrate,
                                  name=what).mp3
    return audio_io.load_clip(mp3, clip_samples=spec.clip_samples, sample_rate=spec.sample_rate, source=what)


# ----------------------------------------------------------------------------------------------- the dataset

def prepare_input(video, audio, spec: pipeline.InputSpec, index: int = 0,
                  sample_rate: int | None = None) -> pipeline.ClipInput:
    label = pipeline.video_label(video, index)
    if pipeline.is_path(video):
        path = Path(video)
        if problem := pipeline.not_a_video_file(path):
            raise ValueError(problem)
        if audio is None or pipeline.is_path(audio):
            return pipeline.load_clip_input(path, None, spec, index, mp3=None if audio is None else Path(audio))
        frames, seconds = pipeline.load_frames(path, spec)
        clip_id = clip_id_from_path(path)
    else:
        frames, seconds, clip_id = frames_from_array(video, spec, label), None, label
    notes: list[str] = []
    if audio is None:
        wave = audio_io.load_clip(silent_clip_audio(spec.recipe).mp3, clip_samples=spec.clip_samples,
                                  sample_rate=spec.sample_rate, source="silence")
        source = AUDIO_SILENCE
        notes.append("in-memory frames come without sound: silence used (pass audio= to give a waveform)")
    elif pipeline.is_path(audio):  # in-memory frames with an mp3 file
        wave, source, audio_notes = pipeline.load_audio(Path(audio), Path(audio), spec, video_seconds=seconds)
        notes += audio_notes
    else:
        rate = spec.sample_rate if sample_rate is None else sample_rate
        wave = audio_from_array(audio, rate, spec, f"audio of {label}")
        source = AUDIO_FROM_ARRAY
    return pipeline.ClipInput(index=index, video_id=clip_id, path=label, frames=frames, audio=wave,
                              audio_source=source, warnings=[f"{pipeline.display_path(label)}: {n}" for n in notes])


class _InputDataset(pipeline.VideoFolderDataset):
    """The (video, audio) pairs as ClipInput items; an unusable one becomes a ClipFailure, as in `infer`."""

    def __init__(self, videos: Sequence, audio: Sequence, spec: pipeline.InputSpec, sample_rate: int | None):
        super().__init__(videos, None, spec)
        self.audio, self.sample_rate = audio, sample_rate

    def load(self, index: int) -> pipeline.ClipInput:
        return prepare_input(self.videos[index], self.audio[index], self.spec, index, self.sample_rate)


# ----------------------------------------------------------------------------------------------- the API

class Captioner:
    """A model ready to caption, with fixed decoding settings (defaults: the checkpoint's). ``model``: an
    ``AVLFormer``, a checkpoint path or Hub id, or a ``pipeline.LoadedModel``; ``device`` default: where the
    model is (``auto`` for a path or id)."""

    def __init__(self, model, *, num_beams: int | None = None, max_length: int | None = None,
                 length_penalty: float | None = None, device: str | torch.device | None = None,
                 batch_size: int = 8, num_workers: int = 0):
        if isinstance(model, pipeline.LoadedModel):
            self.loaded = model
            if device is not None:
                device = resolve_device(device)
                model.model.to(device)
                self.loaded = dataclasses.replace(model, device=device)
        elif pipeline.is_path(model):
            self.loaded = pipeline.load_for_inference(model, "auto" if device is None else device)
        else:
            self.loaded = pipeline.loaded_model(model, None if device is None else resolve_device(device))
        pipeline.check_loader_options(batch_size, num_workers)
        self.decoding = pipeline.checkpoint_decoding(self.loaded.config, num_beams, max_length, length_penalty)
        self.batch_size, self.num_workers = batch_size, num_workers

    @property
    def spec(self) -> pipeline.InputSpec:
        return self.loaded.spec

    def prepare(self, video, audio=None, sample_rate: int | None = None) -> pipeline.ClipInput:
        return prepare_input(video, audio, self.spec, 0, sample_rate)

    def caption_inputs(self, inputs: Sequence[pipeline.ClipInput]) -> list[CaptionResult]:
        predictions = pipeline.caption_batch(self.loaded.model, list(inputs), self.decoding, self.loaded.device,
                                             self.loaded.tokenizer)
        return [_result(clip, prediction) for clip, prediction in zip(inputs, predictions)]

    def stream(self, videos: Iterable, audio=None, sample_rate: int | None = None) -> Iterator[CaptionResult]:
        """One CaptionResult per video, in order, as soon as its batch is captioned."""
        videos = _as_list(videos)
        audio_list = [None] * len(videos) if audio is None else _as_list(audio)
        if len(audio_list) != len(videos):
            raise ValueError(f"audio: {len(audio_list)} entries for {len(videos)} videos; give one per video (None: "
                             f"the video's own audio)")
        dataset = _InputDataset(videos, audio_list, self.spec, sample_rate)
        for clips, predictions, failures in pipeline.caption_dataset(
                self.loaded, dataset, self.decoding, batch_size=self.batch_size, num_workers=self.num_workers):
            done = [_result(c, p) for c, p in zip(clips, predictions)]
            done += [CaptionResult(index=f.index, video=f.path, caption=None, confidence=None, audio_source=None,
                                   error=f.error) for f in failures]
            yield from sorted(done, key=lambda r: r.index)

    def __call__(self, videos: Iterable, audio=None, sample_rate: int | None = None) -> list[CaptionResult]:
        return list(self.stream(videos, audio, sample_rate))


def _result(clip: pipeline.ClipInput, prediction: pipeline.Prediction) -> CaptionResult:
    return CaptionResult(index=clip.index, video=clip.path, caption=prediction.caption,
                         confidence=prediction.confidence, audio_source=clip.audio_source,
                         warnings=list(clip.warnings))


def _as_list(value) -> list:
    # One path or one array is one video (or soundtrack), not a list of characters or of frames.
    if pipeline.is_path(value) or isinstance(value, (np.ndarray, torch.Tensor)):
        return [value]
    return list(value)


def caption(model, videos: Iterable, audio=None, *, num_beams: int | None = None, max_length: int | None = None,
            length_penalty: float | None = None, device: str | torch.device | None = None, batch_size: int = 8,
            sample_rate: int | None = None) -> list[CaptionResult]:
    """One CaptionResult per video of ``videos``, in order (``Captioner`` says what each argument takes);
    ``audio``: None or one entry per video; ``sample_rate`` default: the model's."""
    captioner = Captioner(model, num_beams=num_beams, max_length=max_length, length_penalty=length_penalty,
                          device=device, batch_size=batch_size)
    return captioner(videos, audio, sample_rate)
