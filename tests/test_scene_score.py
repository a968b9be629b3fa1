"""The structured scene score: every reference the grammar writes scores 100 %, and one wrong attribute costs
exactly that attribute."""

from __future__ import annotations

import copy

import pytest

from avlformer.data import synth_scenes
from avlformer.data.scene_captions import scene_references
from avlformer.data.synth import clip_seed
from avlformer.evaluation.scene_score import SCORE_KEYS, clip_hits, parse_scene, score_scenes


def test_every_reference_of_a_test_split_scores_100(split="test", count=150, seed=0):
    """Every reference of a generated test split (no media: the scenes and their captions) scores 100 %."""
    scenes = {i: synth_scenes.make_scene(seed, split, i) for i in range(count)}
    for k in range(5):
        predictions = {i: scene_references(scene, clip_seed(seed, split, i))[k] for i, scene in scenes.items()}
        result = score_scenes(predictions, scenes)
        assert set(result.scores) == set(SCORE_KEYS)
        assert all(value == 100.0 for value in result.scores.values()), (k, result.scores)
        assert result.sound_by_relation == {"offscreen": 100.0, "tied": 100.0}


def test_sound_scores_split_by_relation():
    """A wrong off-screen sound costs the off-screen share only, a wrong tied sound the tied share only."""
    scene = next(scene for scene in (synth_scenes.make_scene(0, "test", i) for i in range(200))
                 if {s["relation"] == "offscreen" for s in scene["sounds"]} == {True, False})
    caption = scene_references(scene, 0)[0]
    for relation in ("offscreen", "tied"):
        truth = copy.deepcopy(scene)
        sound = next(s for s in truth["sounds"] if (s["relation"] == "offscreen") == (relation == "offscreen"))
        sound["kind"] = next(k for k in synth_scenes.SOUND_KINDS if k not in {s["kind"] for s in truth["sounds"]})
        split = score_scenes({"clip": caption}, {"clip": truth}).sound_by_relation
        other = "tied" if relation == "offscreen" else "offscreen"
        assert split[relation] < 100.0 and split[other] == 100.0, (relation, split)


def test_an_empty_or_unrelated_caption_scores_nothing():
    scene = synth_scenes.make_scene(0, "test", 1)
    for caption in ("", "a dog runs in the park while a man sings."):
        hits = clip_hits(caption, scene)
        assert not any(any(values) for values in hits.values())


def _mutations(scene: dict):
    """(key, mutated truth) pairs: the scene with one attribute of one object or sound changed."""
    for i, obj in enumerate(scene["objects"]):
        for key, values in (("colour", synth_scenes.COLOURS), ("size", synth_scenes.SIZES),
                            ("texture", synth_scenes.TEXTURES), ("motion", synth_scenes.MOTIONS)):
            changed = copy.deepcopy(scene)
            changed["objects"][i][key] = next(v for v in values if v != obj[key])
            yield key, changed
        if obj["event"] in ("appears", "disappears"):
            changed = copy.deepcopy(scene)
            changed["objects"][i]["event"] = "disappears" if obj["event"] == "appears" else "appears"
            yield "event", changed
        if obj["event"] != "none":
            changed = copy.deepcopy(scene)
            changed["objects"][i]["event_time"] = next(t for t in synth_scenes.EVENT_TIMES if t != obj["event_time"])
            yield "event_time", changed
    for j, sound in enumerate(scene["sounds"]):
        for key, values in (("pitch", synth_scenes.TONE_PITCHES if sound["kind"] == "tone"
                             else synth_scenes.CHIRP_DIRECTIONS), ("rhythm", synth_scenes.RHYTHMS),
                            ("span", synth_scenes.SPANS), ("envelope", synth_scenes.ENVELOPES)):
            if sound[key] is not None:
                changed = copy.deepcopy(scene)
                changed["sounds"][j][key] = next(v for v in values if v != sound[key])
                yield key, changed
        changed = copy.deepcopy(scene)
        changed["sounds"][j]["relation"] = "visible" if sound["relation"] != "visible" else "offscreen"
        yield "av_relation", changed


@pytest.mark.parametrize("index", range(40))
def test_one_wrong_attribute_loses_exactly_that_attribute(index):
    scene = synth_scenes.make_scene(1, "test", index)
    caption = scene_references(scene, clip_seed(1, "test", index))[index % 5]
    for key, truth in _mutations(scene):
        hits = clip_hits(caption, truth)
        wrong = {k: v.count(False) for k, v in hits.items() if False in v}
        assert wrong == {key: 1}, (key, caption)


def test_a_caption_edited_in_one_word():
    scene = {"split": "test", "duration": 3.0, "background": "gradient", "background_level": 100,
             "background_axis": "x",
             "objects": [{"shape": "circle", "colour": "red", "size": "small", "texture": "striped",
                          "motion": "bouncing", "event": "changes_colour", "event_time": "halfway",
                          "new_colour": "blue", "slot": [64, 48], "phase": 0, "heading": 0.5},
                         {"shape": "square", "colour": "green", "size": "large", "texture": "solid",
                          "motion": "still", "event": "none", "event_time": None, "new_colour": None,
                          "slot": [35, 48], "phase": 0, "heading": 0}],
             "sounds": [{"kind": "clicks", "relation": "bounce", "source": "circle", "pitch": None, "rhythm": None,
                         "span": None, "envelope": None}]}
    caption = ("two shapes are shown on a gradient background while some clicks are heard. the ball is small, red "
               "and striped, and it bounces around the frame and turns blue halfway through. the big green box is "
               "solid. it stays still. a click is heard each time the red ball bounces off an edge.")
    assert all(all(v) for v in clip_hits(caption, scene).values())
    for edit, key in (("and striped", "and dotted"), ("turns blue", "turns yellow"), ("halfway", "near the end"),
                      ("stays still", "moves up and down"), ("the red ball bounces", "the red box bounces"),
                      ("gradient", "plain")):
        old, new = edit, key
        hits = clip_hits(caption.replace(old, new), scene)
        assert sum(v.count(False) for v in hits.values()) == 1, (old, new, hits)
    parsed = parse_scene(caption)
    assert parsed.objects["circle"]["new_colour"] == "blue" and parsed.sounds["clicks"]["source"] == "circle"
