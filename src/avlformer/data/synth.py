"""The built-in demo dataset (README.md, The demo), written as *raw* FAVDBench-layout data (`avlformer synth`; files
in docs/data.md): coloured shapes that move, with a tone whose pitch and rhythm are drawn independently of the
picture, and template captions that ``parse_attributes`` reads back out of a predicted caption.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, NamedTuple

import av
import numpy as np
from tqdm import tqdm

from avlformer.atomic import atomic_path, write_text_atomic
from avlformer.data.recipe import SAMPLE_RATE
from avlformer.data.prepare.outputs_record import OutputsRecord
from avlformer.data.tokenizer import caption_vocab

SPLITS = ("train", "val", "test")
RECORD_NAME = "synth_outputs.json"
SYNTH_FILES = ("captions.json", "attributes.json", "vocab/vocab.txt")  # beside the clips

# Shapes with very different outlines (a disc, a wide bar, a plus sign), so even a tiny, low-resolution video
# encoder separates them within the demo's few hundred training steps.
SHAPES = ("circle", "bar", "cross")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 220), "yellow": (235, 205, 40)}
# motion name -> caption phrase. Each motion is one full period over the clip, so it is told apart by where the
# object goes, not by the order of the frames (the tiny demo model has no absolute temporal position).
MOTIONS = {
    "side_to_side": "moves from side to side",
    "up_and_down": "moves up and down",
    "circling": "moves in a circle",
    "still": "stays still",
}
# Fundamental frequencies far apart on the mel scale so even a small audio front-end separates them.
PITCHES = {"low": 220.0, "medium": 587.0, "high": 1480.0}
# rhythm name -> (beep period in seconds or None for a continuous tone, fraction of each period that sounds,
# caption phrase). Slow beeps are short and sparse, fast beeps fill half of the time: the three rhythms differ
# both in pattern and in how much of any stretch of the soundtrack is sound, which a small audio encoder
# picks up quickly.
RHYTHMS = {
    "continuous": (None, 1.0, "plays continuously"),
    "slow": (0.5, 0.2, "beeps slowly"),
    "fast": (0.1, 0.5, "beeps quickly"),
}
VISUAL_ATTRIBUTES = ("shape", "colour", "motion")
SOUND_ATTRIBUTES = ("pitch", "rhythm")
ATTRIBUTE_VALUES = {
    "shape": SHAPES,
    "colour": tuple(COLOURS),
    "motion": tuple(MOTIONS),
    "pitch": tuple(PITCHES),
    "rhythm": tuple(RHYTHMS),
}

WIDTH, HEIGHT, FPS = 128, 96, 10
MIN_SECONDS, MAX_SECONDS = 2.0, 10.0
OBJECT_RADIUS = 20
BACKGROUND = 128


@dataclass(frozen=True)
class ClipSpec:
    clip_id: str
    split: str
    shape: str
    colour: str
    motion: str
    pitch: str
    rhythm: str
    duration: float
    track_offset: float  # where across the frame the motion path runs, 0..1
    background_shift: int

    def attributes(self) -> dict:
        return {name: getattr(self, name) for name in ("split", *ATTRIBUTE_VALUES, "duration")}


class SynthError(ValueError):
    """What synth was asked cannot be done as asked: one line, no traceback."""


def claim_folder(out: Path, targets: list[Path], overwrite: bool) -> OutputsRecord:
    """Check that synth may write ``targets`` into ``out``, then mark ``out`` as synth's (``synth_outputs.json``,
    before any file is written, so an interrupted run can be rerun); returns the record to add the written files
    to. A folder is written into when it is new or empty, or when it is synth's own and none of ``targets``
    changed since; ``overwrite`` writes over anything, so a user's data is never lost by mistake."""
    if out.exists() and not out.is_dir():
        raise SynthError(f"{out}: exists and is not a folder")
    record = OutputsRecord(out, RECORD_NAME)
    if not overwrite:
        if not record.path.is_file():
            entries = sorted(path.name for path in out.iterdir()) if out.is_dir() else []
            if entries:
                shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
                raise SynthError(f"{out}: holds files synth did not write ({shown}); give a new or empty folder, "
                                 f"or --overwrite to write over them")
        elif changed := [path for path in targets if record.changed(path)]:
            raise SynthError(f"{changed[0]}: changed since synth wrote it ({len(changed)} such file(s)); give "
                             f"a new or empty folder, or --overwrite to write over them")
    out.mkdir(parents=True, exist_ok=True)
    record.save()
    return record


def clip_seed(seed: int, split: str, index: int) -> int:
    # A hash rather than seed + index so neighbouring seeds do not produce shifted copies of each other's clips.
    digest = hashlib.sha256(f"{seed}/{split}/{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def clip_id(split: str, index: int) -> str:
    return f"synth_{split}_{index:05d}"


def make_clip_spec(seed: int, split: str, index: int) -> ClipSpec:
    # Two generators: the sound is drawn from its own stream, so it is independent of the picture by construction.
    picture_rng = np.random.default_rng([clip_seed(seed, split, index), 0])
    sound_rng = np.random.default_rng([clip_seed(seed, split, index), 1])
    return ClipSpec(
        clip_id=clip_id(split, index),
        split=split,
        shape=str(picture_rng.choice(SHAPES)),
        colour=str(picture_rng.choice(tuple(COLOURS))),
        motion=str(picture_rng.choice(tuple(MOTIONS))),
        pitch=str(sound_rng.choice(tuple(PITCHES))),
        rhythm=str(sound_rng.choice(tuple(RHYTHMS))),
        duration=round(float(picture_rng.uniform(MIN_SECONDS, MAX_SECONDS)), 1),
        track_offset=float(picture_rng.uniform(0.25, 0.75)),
        background_shift=int(picture_rng.integers(-12, 13)),
    )


def make_caption(attributes: dict) -> str:
    shape, colour = attributes["shape"], attributes["colour"]
    motion_phrase = MOTIONS[attributes["motion"]]
    rhythm_phrase = RHYTHMS[attributes["rhythm"]][2]
    return (
        f"a {colour} {shape} {motion_phrase} on a gray background. "
        f"the {shape} is {colour}. "
        f"a {attributes['pitch']} pitched tone {rhythm_phrase}."
    )


# attribute -> (pattern whose group 1 names the value, value lookup; None = the group is the value)
_MENTION_PATTERNS = {
    "shape": (re.compile(r"\b(" + "|".join(SHAPES) + r")\b"), None),
    "colour": (re.compile(r"\b(" + "|".join(COLOURS) + r")\b"), None),
    "motion": (re.compile(r"\b(" + "|".join(MOTIONS.values()) + r")\b"),
               {phrase: name for name, phrase in MOTIONS.items()}),
    "pitch": (re.compile(r"\b(" + "|".join(PITCHES) + r") pitched\b"), None),
    "rhythm": (re.compile(r"\b(" + "|".join(phrase for *_, phrase in RHYTHMS.values()) + r")\b"),
               {phrase: name for name, (*_, phrase) in RHYTHMS.items()}),
}


@dataclass(frozen=True)
class Mention:
    attribute: str
    value: str | None   # None: the wording looks like this attribute but names no known value ("from left to left")
    start: int          # character span in the caption as given
    end: int


def attribute_mentions(caption: str) -> list[Mention]:
    """Every place the caption states an attribute, in text order (the report highlights the wrong ones)."""
    text = str(caption).lower()
    mentions = []
    for attribute, (pattern, lookup) in _MENTION_PATTERNS.items():
        for match in pattern.finditer(text):
            word = " ".join(match.group(1).split())
            value = word if lookup is None else lookup.get(word)
            mentions.append(Mention(attribute, value, match.start(), match.end()))
    # "circle" inside "moves in a circle" is part of the motion, not a shape
    inside = [m for m in mentions if any(o is not m and o.start <= m.start and m.end <= o.end
                                         and o.end - o.start > m.end - m.start for o in mentions)]
    return sorted((m for m in mentions if m not in inside), key=lambda m: m.start)


def parse_attributes(caption: str) -> dict:
    """Recover every attribute from a (possibly predicted) caption; an attribute the caption does not state
    (or states in a form the templates never produce) is None. The first mention wins."""
    parsed = dict.fromkeys(ATTRIBUTE_VALUES)
    for mention in attribute_mentions(" ".join(str(caption).split())):
        if parsed[mention.attribute] is None and mention.value is not None:
            parsed[mention.attribute] = mention.value
    return parsed


GRID_Y, GRID_X = np.mgrid[0:HEIGHT, 0:WIDTH]


def shape_mask(shape: str, cx: float, cy: float, r: float = OBJECT_RADIUS) -> np.ndarray:
    """Pixels of a shape of either preset centred at (cx, cy), of radius ``r``."""
    dx, dy = GRID_X - cx, GRID_Y - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "bar":  # wide and flat
        return (np.abs(dx) <= r) & (np.abs(dy) <= 0.35 * r)
    if shape == "square":
        return (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    if shape == "triangle":  # pointing up
        return (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)
    if shape == "cross":  # a plus sign
        arm = 0.3 * r
        return ((np.abs(dx) <= r) & (np.abs(dy) <= arm)) | ((np.abs(dy) <= r) & (np.abs(dx) <= arm))
    raise ValueError(f"unknown shape {shape!r}")


def object_centre(spec: ClipSpec, progress: float) -> tuple[float, float]:
    """Centre of the object at ``progress`` in [0, 1] of the clip. Paths stay inside the central
    HEIGHT x HEIGHT square, so the object is always whole after the loaders' centre crop."""
    r, side = OBJECT_RADIUS, HEIGHT
    centre_x, centre_y = WIDTH / 2, side / 2
    amplitude = side / 2 - r
    # track_offset shifts the still position and the phase, so clips of one motion are not identical
    phase = 2 * np.pi * (progress + spec.track_offset)
    still_shift = (spec.track_offset - 0.5) * amplitude
    return {
        "side_to_side": (centre_x + amplitude * np.sin(phase), centre_y),
        "up_and_down": (centre_x, centre_y + amplitude * np.sin(phase)),
        "circling": (centre_x + amplitude * np.cos(phase), centre_y + amplitude * np.sin(phase)),
        "still": (centre_x + still_shift, centre_y - still_shift),
    }[spec.motion]


def render_frames(spec: ClipSpec) -> np.ndarray:
    """uint8 (N, HEIGHT, WIDTH, 3) frames of the clip."""
    count = max(2, int(round(spec.duration * FPS)))
    frames = np.full((count, HEIGHT, WIDTH, 3), BACKGROUND + spec.background_shift, dtype=np.uint8)
    for i in range(count):
        frames[i][shape_mask(spec.shape, *object_centre(spec, i / (count - 1)))] = COLOURS[spec.colour]
    return frames


def render_audio(spec: ClipSpec, seed: int) -> np.ndarray:
    """float32 mono waveform at SAMPLE_RATE in [-1, 1]: a tone with a harmonic, gated by the rhythm, plus a little noise."""
    n = int(round(spec.duration * SAMPLE_RATE))
    t = np.arange(n, dtype=np.float64) / SAMPLE_RATE
    f0 = PITCHES[spec.pitch]
    tone = np.sin(2 * np.pi * f0 * t) + 0.3 * np.sin(2 * np.pi * 2 * f0 * t)
    period, duty, _ = RHYTHMS[spec.rhythm]
    envelope = np.ones(n) if period is None else beep_envelope(t, period, duty)
    noise = np.random.default_rng([seed, 2]).normal(0.0, 0.01, n)
    return (0.25 * tone * envelope + noise).astype(np.float32)


def beep_envelope(t: np.ndarray, period: float, duty: float = 0.5) -> np.ndarray:
    """On for the first ``duty`` of every period, with 10 ms ramps so the gating does not click."""
    phase = np.mod(t, period)
    on = period * duty
    ramp = 0.01
    rise = np.clip(phase / ramp, 0, 1)
    fall = np.clip((on - phase) / ramp, 0, 1)
    return np.minimum(rise, fall)


def _encode_audio(container, stream, waveform: np.ndarray, block: int = 16000) -> None:
    for start in range(0, len(waveform), block):
        frame = av.AudioFrame.from_ndarray(waveform[None, start:start + block], format="fltp", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = start
        frame.time_base = Fraction(1, SAMPLE_RATE)
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def write_mp4(path: Path, frames: np.ndarray, waveform: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="mp4") as container:
            video = container.add_stream("libx264", rate=FPS, options={"preset": "ultrafast", "crf": "20"})
            video.width, video.height, video.pix_fmt = WIDTH, HEIGHT, "yuv420p"
            # The fast coder halves AAC encoding time; quality is irrelevant for pure tones.
            audio = container.add_stream("aac", rate=SAMPLE_RATE, layout="mono", options={"aac_coder": "fast"})
            for image in frames:
                container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(video.encode(None))
            _encode_audio(container, audio, waveform)


def write_mp3(path: Path, waveform: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="mp3") as container:
            # compression_level 9 = LAME's fastest algorithm: half the encoding time, still clean tones.
            stream = container.add_stream("libmp3lame", rate=SAMPLE_RATE, layout="mono",
                                          options={"compression_level": "9"})
            _encode_audio(container, stream, waveform)


def clip_paths(out: Path, split: str, index: int, name_of=clip_id) -> tuple[Path, Path]:
    """(video, mp3) of one clip; ``name_of(split, index)`` is its preset's clip id."""
    name = name_of(split, index)
    return out / "videos" / split / f"{name}.mp4", out / "audio_mp3" / split / f"{name}.mp3"


def write_clip(out: Path, seed: int, split: str, index: int) -> tuple[str, dict, str]:
    spec = make_clip_spec(seed, split, index)
    waveform = render_audio(spec, clip_seed(seed, split, index))
    video, mp3 = clip_paths(out, split, index)
    write_mp4(video, render_frames(spec), waveform)
    write_mp3(mp3, waveform)
    attributes = spec.attributes()
    return spec.clip_id, attributes, make_caption(attributes)


class Preset(NamedTuple):
    """A kind of synthetic dataset: ``write_clip(out, seed, split, index)`` writes one clip and returns (id,
    attributes, caption or references); ``clip_id(split, index)`` names it."""
    write_clip: Callable[[Path, int, str, int], tuple]
    clip_id: Callable[[str, int], str]


DEMO = Preset(write_clip, clip_id)


def synthesize(out: str | os.PathLike, counts: dict[str, int], seed: int = 0, workers: int | None = None,
               progress: bool = True, overwrite: bool = False, preset: "Preset | None" = None) -> dict:
    """Write the dataset of ``preset`` (default ``DEMO``); returns {"captions": {...}, "attributes": {...}} as
    also written to disk. Raises SynthError (a ValueError) for bad counts and for a folder holding data synth did
    not write (unless ``overwrite``)."""
    write, name_of = preset or DEMO
    out = Path(out)
    for split, count in counts.items():
        if split not in SPLITS:
            raise SynthError(f"unknown split {split!r}; expected one of {SPLITS}")
        if count < 0:
            raise SynthError(f"--num-{split} must be >= 0, got {count}")
    jobs = [(out, seed, split, i) for split in SPLITS for i in range(counts.get(split, 0))]
    clip_files = [path for _, _, split, i in jobs for path in clip_paths(out, split, i, name_of)]
    record = claim_folder(out, clip_files + [out / name for name in SYNTH_FILES], overwrite)
    workers = max(1, min(workers or len(os.sched_getaffinity(0)), len(jobs) or 1))
    arguments = [list(column) for column in zip(*jobs)] or [[]] * 4   # write's (out, seed, split, index) columns
    with ProcessPoolExecutor(max_workers=workers) if workers > 1 else contextlib.nullcontext() as pool:
        done = pool.map(write, *arguments, chunksize=4) if pool else map(write, *arguments)
        results = list(tqdm(done, total=len(jobs), desc="synth", unit="clip", disable=not progress))
    captions = {cid: caption for cid, _, caption in results}
    attributes = {cid: attrs for cid, attrs, _ in results}
    for path in clip_files:
        record.remember(path)
    train = [text for cid, caption in captions.items() if attributes[cid]["split"] == "train"
             for text in ([caption] if isinstance(caption, str) else caption)]
    texts = {"captions.json": json.dumps(captions, indent=1, sort_keys=True),
             "attributes.json": json.dumps(attributes, indent=1, sort_keys=True),
             "vocab/vocab.txt": "\n".join(caption_vocab(train)) + "\n"}
    for name, text in texts.items():
        record.will_write(out / name, text.encode("utf-8"))
        write_text_atomic(out / name, text)
    record.save()
    return {"captions": captions, "attributes": attributes}
