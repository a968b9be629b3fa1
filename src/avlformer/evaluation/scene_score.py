"""The scenes benchmark's structured score (docs/scenes.md, The structured score): the scene is read back out of a
predicted caption with the caption grammar's phrase tables (``data/scene_captions``) and compared with the
generator's ground truth, attribute by attribute.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from avlformer.data import scene_captions as words

VISUAL_KEYS = ("colour", "size", "texture", "motion", "background", "object_count")
EVENT_KEYS = ("event", "event_time")
SOUND_KEYS = ("sound_kind", "pitch", "rhythm", "span", "envelope", "sound_count")
RELATION_KEYS = ("av_relation",)
SCORE_KEYS = VISUAL_KEYS + EVENT_KEYS + SOUND_KEYS + RELATION_KEYS
GROUPS = {"visual": VISUAL_KEYS, "event": EVENT_KEYS, "sound": SOUND_KEYS, "av_relation": RELATION_KEYS}


def _table(mapping: dict) -> list[tuple[str, str]]:
    return [(phrase, value) for value, phrases in mapping.items() for phrase in phrases]


def _alternation(pairs: list[tuple[str, str]]) -> tuple[re.Pattern, dict[str, str]]:
    lookup = dict(pairs)
    ordered = sorted(lookup, key=len, reverse=True)
    return re.compile(r"\b(" + "|".join(re.escape(p) for p in ordered) + r")\b"), lookup


_COLOURS = _alternation(_table(words.COLOUR_WORDS))
_CHANGE = re.compile(r"\b(?:" + "|".join(re.escape(v) for v in words.COLOUR_CHANGE_WORDS) + r") ("
                     + _COLOURS[0].pattern[3:-3] + r")\b")
_OBJECT_TABLES = {   # in the order they are read (and blanked)
    "motion": _alternation(_table(words.MOTION_WORDS)),
    "event": _alternation(_table(words.EVENT_WORDS)),
    "event_time": _alternation(_table(words.TIME_WORDS)),
    "texture": _alternation(_table(words.TEXTURE_WITH) + _table(words.TEXTURE_ADJECTIVES)),
    "size": _alternation(_table(words.SIZE_WORDS)),
}
_SHAPES = _alternation(_table(words.SHAPE_WORDS))
_BACKGROUND = _alternation(_table(words.BACKGROUND_WORDS))
_BACKGROUND_NOUN = re.compile(r"\b(" + "|".join(words.BACKGROUND_NOUNS) + r")\b")
_SOUND_KIND = _alternation(_table(words.SOUND_NOUNS) + [("tones", "tone"), ("notes", "tone"), ("chirp", "chirp"),
                                                        ("click", "clicks"), ("noise", "noise")])
# The words after the object in "each time the {obj} bounces off an edge", "while the {obj} is visible"
_RELATIONS = _alternation([(p, "offscreen") for p in words.OFFSCREEN_WORDS]
                          + [(p.split("{obj}")[1].strip(), "bounce") for p in words.BOUNCE_WORDS]
                          + [(p.split("{obj}")[1].strip(), "visible") for p in words.VISIBLE_WORDS])
_SOUND_TABLES = {
    "span": _alternation(_table(words.SPAN_WORDS)),
    "envelope": _alternation(_table(words.ENVELOPE_WORDS)),
    "rhythm": _alternation([(p, value) for value, (adverbs, adjectives) in words.RHYTHM_WORDS.items()
                            for p in adverbs + adjectives]),
    "pitch": _alternation(_table(words.PITCH_WORDS)),
}


def _take(pattern_lookup, sentence: str) -> tuple[str | None, str]:
    """The first phrase of the table in the sentence (its value), and the sentence with that phrase blanked."""
    pattern, lookup = pattern_lookup
    match = pattern.search(sentence)
    if match is None:
        return None, sentence
    return lookup[match.group(1)], sentence[:match.start()] + " " * len(match.group(0)) + sentence[match.end():]


def _all(pattern_lookup, sentence: str) -> list[str]:
    pattern, lookup = pattern_lookup
    return [lookup[m.group(1)] for m in pattern.finditer(sentence)]


@dataclass
class ParsedScene:
    background: str | None = None
    objects: dict[str, dict] = field(default_factory=dict)   # shape -> attributes
    sounds: dict[str, dict] = field(default_factory=dict)    # kind -> attributes


def _read_object(sentence: str, obj: dict) -> None:
    new_colour, sentence = _take((_CHANGE, _COLOURS[1]), sentence)
    if new_colour is not None:
        obj.setdefault("event", "changes_colour")
        obj.setdefault("new_colour", new_colour)
    for key, table in _OBJECT_TABLES.items():
        value, sentence = _take(table, sentence)
        if value is not None:
            obj.setdefault(key, value)
    colour, sentence = _take(_COLOURS, sentence)
    if colour is not None:
        obj.setdefault("colour", colour)


def _read_sound(sentence: str, kind: str, sounds: dict) -> None:
    sound = sounds.setdefault(kind, {})
    relation, rest = _take(_RELATIONS, sentence)
    if relation is not None:
        sound.setdefault("relation", relation)
        if relation != "offscreen":
            shape = _all(_SHAPES, rest)
            sound.setdefault("source", shape[0] if shape else None)
    for key, table in _SOUND_TABLES.items():
        value, rest = _take(table, rest)
        if value is not None:
            sound.setdefault(key, value)


def parse_scene(caption: str) -> ParsedScene:
    """What the caption says about the scene; the first statement of an attribute wins."""
    parsed = ParsedScene()
    current: str | None = None
    text = " ".join(str(caption).lower().split())
    for sentence in (s.strip() for s in re.split(r"[.!?;]", text) if s.strip()):
        if _BACKGROUND_NOUN.search(sentence):
            background, rest = _take(_BACKGROUND, sentence)
            parsed.background = parsed.background or background
            for shape in _all(_SHAPES, rest):
                parsed.objects.setdefault(shape, {})
            continue
        kinds = _all(_SOUND_KIND, sentence)
        if kinds:
            _read_sound(sentence, kinds[0], parsed.sounds)
            continue
        without_motion = _take(_OBJECT_TABLES["motion"], sentence)[1]
        shapes = _all(_SHAPES, without_motion)
        current = shapes[0] if shapes else current
        if current is not None:
            _read_object(sentence, parsed.objects.setdefault(current, {}))
    return parsed


# ----------------------------------------------------------------------------------------------------- scoring

def clip_hits(caption: str, scene: dict, by_relation: dict[str, list[bool]] | None = None) -> dict[str, list[bool]]:
    """Per score key, one right/wrong per ground-truth item of the clip (none where the key does not apply).
    ``by_relation`` collects the sound attributes' hits split into off-screen sounds (``offscreen``: only the audio
    tells them) and sounds tied to what is seen (``tied``: bounce clicks and visibility tones)."""
    parsed = parse_scene(caption)
    hits: dict[str, list[bool]] = {key: [] for key in SCORE_KEYS}
    for obj in scene["objects"]:
        said = parsed.objects.get(obj["shape"], {})
        for key in ("colour", "size", "texture", "motion"):
            hits[key].append(said.get(key) == obj[key])
        hits["event"].append((said.get("event", "none"), said.get("new_colour")) == (obj["event"], obj["new_colour"])
                             and obj["shape"] in parsed.objects)
        if obj["event"] != "none":
            hits["event_time"].append(said.get("event_time") == obj["event_time"])
    hits["background"].append(parsed.background == scene["background"])
    hits["object_count"].append(set(parsed.objects) == {o["shape"] for o in scene["objects"]})
    for sound in scene["sounds"]:
        said = parsed.sounds.get(sound["kind"])
        sound_hits = {"sound_kind": said is not None}
        said = said or {}
        sound_hits |= {key: said.get(key) == sound[key] for key in ("pitch", "rhythm", "span", "envelope")
                       if sound[key] is not None}
        for key, hit in sound_hits.items():
            hits[key].append(hit)
        if by_relation is not None:
            by_relation["offscreen" if sound["relation"] == "offscreen" else "tied"] += sound_hits.values()
        hits["av_relation"].append((said.get("relation"), said.get("source")) == (sound["relation"], sound["source"]))
    hits["sound_count"].append(set(parsed.sounds) == {s["kind"] for s in scene["sounds"]})
    return hits


@dataclass
class SceneScore:
    scores: dict[str, float]              # key -> percent right (0-100)
    groups: dict[str, float]              # visual / event / sound / av_relation: mean of their keys
    counts: dict[str, int]                # key -> items scored
    per_clip: dict[str, dict[str, float]]
    sound_by_relation: dict[str, float]   # offscreen / tied: percent of those sounds' attributes right


def score_scenes(predictions: dict[str, str], scenes: dict[str, dict]) -> SceneScore:
    """Score every clip of ``scenes`` (ground truth by id); a clip with no prediction is scored as an empty
    caption (all wrong)."""
    totals: dict[str, list[bool]] = {key: [] for key in SCORE_KEYS}
    per_clip = {}
    by_relation: dict[str, list[bool]] = {"offscreen": [], "tied": []}
    for clip_id, scene in scenes.items():
        hits = clip_hits(predictions.get(clip_id, ""), scene, by_relation)
        per_clip[clip_id] = {k: 100.0 * sum(v) / len(v) for k, v in hits.items() if v}
        for key, values in hits.items():
            totals[key] += values
    scores = {key: 100.0 * sum(v) / len(v) for key, v in totals.items() if v}
    groups = {name: sum(scores[k] for k in keys if k in scores) / max(1, sum(k in scores for k in keys))
              for name, keys in GROUPS.items()}
    return SceneScore(scores=scores, groups=groups, counts={k: len(v) for k, v in totals.items()}, per_clip=per_clip,
                      sound_by_relation={k: 100.0 * sum(v) / len(v) for k, v in by_relation.items() if v})


def load_scene_truth(path) -> dict[str, dict]:
    """The generator's ``attributes.json`` (``{clip id: scene}``); a file that is not one raises ValueError
    naming it."""
    from avlformer.json_files import read_json

    data = read_json(path, "scenes ground truth")
    if not isinstance(data, dict) or not data or not all(
            isinstance(scene, dict) and {"objects", "sounds", "background"} <= set(scene) for scene in data.values()):
        raise ValueError(f"{path}: not the attributes.json of `avlformer synth --preset scenes` "
                         f"({{clip id: scene with objects, sounds, background}})")
    return data
