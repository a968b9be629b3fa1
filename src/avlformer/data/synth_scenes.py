"""`avlformer synth --preset scenes`: a benchmark in miniature (docs/scenes.md, The data: what a scene holds, its
sounds, the files written, in the demo preset's layout). References come from ``data/scene_captions``; a clip is a
pure function of (seed, split, index).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from avlformer.data.recipe import SAMPLE_RATE
from avlformer.data.scene_captions import scene_references
from avlformer.data.synth import (FPS, GRID_X, GRID_Y, HEIGHT, WIDTH, Preset, beep_envelope, clip_paths, clip_seed,
                                  shape_mask, write_mp3, write_mp4)

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 220), "yellow": (235, 205, 40),
           "purple": (150, 60, 190)}
SIZES = {"small": 8, "large": 14}   # radius in pixels
TEXTURES = ("solid", "striped", "dotted")
MOTIONS = ("still", "side_to_side", "up_and_down", "circling", "bouncing")
EVENTS = ("none", "appears", "disappears", "changes_colour", "speeds_up")
# event time -> fraction of the clip
EVENT_TIMES = {"early": 0.25, "halfway": 0.5, "late": 0.75}
BACKGROUNDS = ("plain", "gradient", "textured")

SOUND_KINDS = ("tone", "noise", "chirp", "clicks")
TONE_PITCHES = {"low": 220.0, "medium": 587.0, "high": 1480.0}
CHIRP_DIRECTIONS = ("rising", "falling")
# rhythm -> (period s, fraction sounding); tones may also be "steady"
RHYTHMS = {"slow": (0.5, 0.3), "fast": (0.16, 0.5)}
ENVELOPES = ("constant", "fades_in", "fades_out")
SPANS = {"throughout": (0.0, 1.0), "first_half": (0.0, 0.5), "second_half": (0.5, 1.0)}

MIN_SECONDS, MAX_SECONDS = 3.0, 4.0
# Objects live in the central HEIGHT x HEIGHT square (what survives the loaders' centre crop), each around its own
# slot of a 3x3 grid so that still and swaying objects do not cover each other.
_SIDE = HEIGHT
_LEFT = (WIDTH - _SIDE) / 2
_SLOTS = [(_LEFT + _SIDE * (0.5 + 0.3 * i), _SIDE * (0.5 + 0.3 * j)) for j in (-1, 0, 1) for i in (-1, 0, 1)]
_SWAY = 0.14 * _SIDE


def _choice(rng: np.random.Generator, values):
    values = tuple(values)
    return values[int(rng.integers(len(values)))]


def make_scene(seed: int, split: str, index: int) -> dict:
    """The clip's ground truth: a JSON-able dict (what attributes.json holds), drawn from (seed, split, index)."""
    rng = np.random.default_rng([clip_seed(seed, split, index), 7])
    duration = round(float(rng.uniform(MIN_SECONDS, MAX_SECONDS)), 1)
    count = int(rng.choice([1, 2, 3], p=[0.35, 0.45, 0.2]))
    shapes = [str(s) for s in rng.permutation(SHAPES)[:count]]
    slots = rng.permutation(len(_SLOTS))[:count]
    objects = []
    for shape, slot in zip(shapes, slots):
        motions = [m for m in MOTIONS if m != "bouncing" or all(o["motion"] != "bouncing" for o in objects)]
        motion = _choice(rng, motions)
        colour = _choice(rng, COLOURS)
        event = "none" if rng.random() < 0.35 else _choice(rng, [e for e in EVENTS[1:]
                                                                if e != "speeds_up" or motion != "still"])
        obj = {"shape": shape, "colour": colour, "size": _choice(rng, SIZES), "texture": _choice(rng, TEXTURES),
               "motion": motion, "event": event,
               "event_time": None if event == "none" else _choice(rng, EVENT_TIMES),
               "new_colour": _choice(rng, [c for c in COLOURS if c != colour]) if event == "changes_colour" else None,
               # drawing parameters (not described)
               "slot": [round(v, 2) for v in _SLOTS[int(slot)]], "phase": round(float(rng.uniform(0, 1)), 3),
               "heading": round(float(rng.uniform(0.2, 0.6) * np.pi / 2 + (np.pi / 2) * rng.integers(4)), 3)}
        objects.append(obj)
    scene = {"split": split, "duration": duration, "objects": objects,
             "background": _choice(rng, BACKGROUNDS), "background_level": int(rng.integers(80, 170)),
             "background_axis": _choice(rng, ("x", "y"))}
    scene["sounds"] = _make_sounds(rng, objects)
    return scene


def _make_sounds(rng: np.random.Generator, objects: list[dict]) -> list[dict]:
    # Three objects come with one sound, so that no caption runs much past 80 words.
    wanted = 1 if len(objects) == 3 or rng.random() < 0.5 else 2
    sounds = []
    bouncer = next((o for o in objects if o["motion"] == "bouncing"), None)
    blinker = next((o for o in objects if o["event"] in ("appears", "disappears")), None)
    if bouncer is not None and rng.random() < 0.7:
        sounds.append(_sound("clicks", "bounce", bouncer["shape"]))
    if blinker is not None and len(sounds) < wanted and rng.random() < 0.7:
        sounds.append({**_sound("tone", "visible", blinker["shape"]), "pitch": _choice(rng, TONE_PITCHES),
                       "rhythm": _choice(rng, ("steady", *RHYTHMS))})
    while len(sounds) < wanted:
        kind = _choice(rng, [k for k in SOUND_KINDS if all(s["kind"] != k for s in sounds)])
        sound = _sound(kind, "offscreen", None)
        sound["pitch"] = (_choice(rng, TONE_PITCHES) if kind == "tone"
                          else _choice(rng, CHIRP_DIRECTIONS) if kind == "chirp" else None)
        sound["rhythm"] = _choice(rng, ("steady", *RHYTHMS) if kind == "tone" else RHYTHMS)
        sound["span"] = _choice(rng, SPANS)
        # a sound heard for half the clip has no loudness envelope to describe
        sound["envelope"] = _choice(rng, ENVELOPES) if sound["span"] == "throughout" else None
        sounds.append(sound)
    return sounds


def _sound(kind: str, relation: str, source: str | None) -> dict:
    return {"kind": kind, "relation": relation, "source": source, "pitch": None, "rhythm": None,
            "span": None, "envelope": None}


# ----------------------------------------------------------------------------------------------------- motion

def travelled(obj: dict, t: np.ndarray, duration: float) -> np.ndarray:
    """Progress of the object's motion, in clip lengths: 1 per clip, twice as fast after a speed-up."""
    s = np.asarray(t, dtype=np.float64) / duration
    if obj["event"] == "speeds_up":
        at = EVENT_TIMES[obj["event_time"]]
        s = s + np.maximum(0.0, s - at)
    return s


def _fold(u: np.ndarray, low: float, high: float) -> np.ndarray:
    """Unfolded coordinate -> position reflecting between low and high (a triangle wave)."""
    span = high - low
    m = np.mod(u - low, 2 * span)
    return low + span - np.abs(m - span)


def positions(obj: dict, t: np.ndarray, duration: float) -> tuple[np.ndarray, np.ndarray]:
    s = travelled(obj, t, duration)
    cx, cy = obj["slot"]
    phase = 2 * np.pi * (s + obj["phase"])
    motion = obj["motion"]
    if motion == "still":
        return np.full_like(s, cx), np.full_like(s, cy)
    if motion == "side_to_side":
        return cx + _SWAY * np.sin(phase), np.full_like(s, cy)
    if motion == "up_and_down":
        return np.full_like(s, cx), cy + _SWAY * np.sin(phase)
    if motion == "circling":
        return cx + _SWAY * np.cos(phase), cy + _SWAY * np.sin(phase)
    # bouncing: a straight line over the whole square, about 1.6 square widths per clip
    r = SIZES[obj["size"]]
    distance = 1.6 * (_SIDE - 2 * r) * s
    x = _fold(cx + distance * np.cos(obj["heading"]), _LEFT + r, _LEFT + _SIDE - r)
    y = _fold(cy + distance * np.sin(obj["heading"]), r, _SIDE - r)
    return x, y


def bounce_times(obj: dict, duration: float, step: float = 0.001) -> list[float]:
    """Seconds at which the bouncing object hits an edge (where its direction on either axis turns)."""
    t = np.arange(0.0, duration, step)
    x, y = positions(obj, t, duration)
    turns = set()
    for axis in (x, y):
        d = np.sign(np.diff(axis))
        turns |= {float(t[i + 1]) for i in np.nonzero(d[1:] * d[:-1] < 0)[0]}
    return sorted(turns)


def visible(obj: dict, t: np.ndarray, duration: float) -> np.ndarray:
    at = duration * EVENT_TIMES[obj["event_time"]] if obj["event_time"] else 0.0
    if obj["event"] == "appears":
        return t >= at
    if obj["event"] == "disappears":
        return t < at
    return np.ones_like(t, dtype=bool)


# ----------------------------------------------------------------------------------------------------- pictures

def _texture_dark(texture: str, cx: float, cy: float) -> np.ndarray | None:
    """Where the texture darkens the object (pattern fixed to the object, so it moves with it)."""
    dx, dy = np.round(GRID_X - cx).astype(int), np.round(GRID_Y - cy).astype(int)
    if texture == "striped":
        return np.mod(dy, 6) < 3
    if texture == "dotted":
        return (np.mod(dx, 6) < 2) & (np.mod(dy, 6) < 2)
    return None


def _background(scene: dict, rng: np.random.Generator) -> np.ndarray:
    level = scene["background_level"]
    if scene["background"] == "plain":
        plane = np.full((HEIGHT, WIDTH), float(level))
    elif scene["background"] == "gradient":
        ramp = GRID_X / (WIDTH - 1) if scene["background_axis"] == "x" else GRID_Y / (HEIGHT - 1)
        plane = level - 50 + 100 * ramp
    else:  # textured: 8-pixel tiles of random shade
        tiles = rng.integers(-28, 29, size=(HEIGHT // 8 + 1, WIDTH // 8 + 1))
        plane = level + tiles[GRID_Y // 8, GRID_X // 8]
    return np.repeat(np.clip(plane, 0, 255)[..., None], 3, axis=2).astype(np.uint8)


def render_frames(scene: dict, rng: np.random.Generator) -> np.ndarray:
    duration = scene["duration"]
    count = max(2, int(round(duration * FPS)))
    t = np.arange(count) / FPS
    background = _background(scene, rng)
    frames = np.repeat(background[None], count, axis=0)
    for obj in scene["objects"]:
        xs, ys = positions(obj, t, duration)
        shown = visible(obj, t, duration)
        change = duration * EVENT_TIMES[obj["event_time"]] if obj["event"] == "changes_colour" else None
        for i in np.flatnonzero(shown):
            colour = np.array(COLOURS[obj["new_colour"] if change is not None and t[i] >= change
                                      else obj["colour"]], dtype=np.float64)
            mask = shape_mask(obj["shape"], xs[i], ys[i], SIZES[obj["size"]])
            frames[i][mask] = colour.astype(np.uint8)
            dark = _texture_dark(obj["texture"], xs[i], ys[i])
            if dark is not None:
                frames[i][mask & dark] = (0.45 * colour).astype(np.uint8)
    return frames


# ----------------------------------------------------------------------------------------------------- sounds

def _linear_envelope(kind: str, t: np.ndarray, duration: float) -> np.ndarray:
    if kind == "fades_in":
        return np.clip(t / duration, 0.05, 1.0)
    if kind == "fades_out":
        return np.clip(1.0 - t / duration, 0.05, 1.0)
    return np.ones_like(t)


def _source_wave(sound: dict, scene: dict, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    duration = scene["duration"]
    kind = sound["kind"]
    if kind == "clicks":
        if sound["relation"] == "bounce":
            source = next(o for o in scene["objects"] if o["shape"] == sound["source"])
            onsets = bounce_times(source, duration)
        else:
            period = RHYTHMS[sound["rhythm"]][0] * 1.5
            onsets = list(np.arange(period / 2, duration, period))
        wave = np.zeros_like(t)
        burst = np.exp(-np.arange(int(0.006 * SAMPLE_RATE)) / (0.0015 * SAMPLE_RATE))
        for onset in onsets:
            start = int(onset * SAMPLE_RATE)
            piece = burst[: max(0, len(t) - start)]
            wave[start : start + len(piece)] += piece * rng.choice([-1.0, 1.0], size=len(piece))
        return 2.0 * wave
    if kind == "tone":
        f0 = TONE_PITCHES[sound["pitch"]]
        wave = np.sin(2 * np.pi * f0 * t) + 0.3 * np.sin(4 * np.pi * f0 * t)
        if sound["rhythm"] != "steady":
            wave = wave * beep_envelope(t, *RHYTHMS[sound["rhythm"]])
        return wave
    period, duty = RHYTHMS[sound["rhythm"]]
    gate = beep_envelope(t, period, duty)
    if kind == "noise":
        return 0.8 * rng.normal(0.0, 1.0, len(t)) * gate
    # chirp: within each burst the frequency sweeps 400 Hz <-> 2400 Hz
    within = np.clip(np.mod(t, period) / (period * duty), 0, 1)
    if sound["pitch"] == "falling":
        within = 1.0 - within
    frequency = 400.0 * np.power(6.0, within)
    return np.sin(2 * np.pi * np.cumsum(frequency) / SAMPLE_RATE) * gate


def render_audio(scene: dict, rng: np.random.Generator) -> np.ndarray:
    duration = scene["duration"]
    t = np.arange(int(round(duration * SAMPLE_RATE))) / SAMPLE_RATE
    mix = rng.normal(0.0, 0.005, len(t))
    for sound in scene["sounds"]:
        wave = _source_wave(sound, scene, t, rng)
        if sound["relation"] == "visible":
            wave = wave * visible(next(o for o in scene["objects"] if o["shape"] == sound["source"]), t, duration)
        if sound["relation"] == "offscreen":
            start, end = SPANS[sound["span"]]
            wave = wave * ((t >= start * duration) & (t < end * duration))
            wave = wave * _linear_envelope(sound["envelope"], t, duration)
        mix += 0.2 * wave
    return np.clip(mix, -1.0, 1.0).astype(np.float32)


def render_clip(seed: int, split: str, index: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """(scene, frames uint8 (N, H, W, 3), waveform float32 at SAMPLE_RATE)."""
    scene = make_scene(seed, split, index)
    picture_rng = np.random.default_rng([clip_seed(seed, split, index), 8])
    sound_rng = np.random.default_rng([clip_seed(seed, split, index), 9])
    return scene, render_frames(scene, picture_rng), render_audio(scene, sound_rng)


def scene_clip_id(split: str, index: int) -> str:
    return f"scene_{split}_{index:05d}"


def write_clip(out: Path, seed: int, split: str, index: int) -> tuple[str, dict, list[str]]:
    """Write one clip's mp4 and mp3; returns (clip id, scene, references)."""
    scene, frames, waveform = render_clip(seed, split, index)
    video, mp3 = clip_paths(out, split, index, scene_clip_id)
    write_mp4(video, frames, waveform)
    write_mp3(mp3, waveform)
    return scene_clip_id(split, index), scene, scene_references(scene, clip_seed(seed, split, index))


SCENES = Preset(write_clip, scene_clip_id)
