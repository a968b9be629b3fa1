"""The scenes preset's caption grammar (docs/scenes.md, The captions), five references per clip.

The phrase tables below are the single source of the wording: the grammar draws from them and
``evaluation/scene_score`` builds its parser from them, so every reference the grammar writes parses back to its
scene.
"""

from __future__ import annotations

import numpy as np

# value -> phrases (the first is the plain one). Object attributes:
SHAPE_WORDS = {"circle": ("circle", "disc", "ball"), "square": ("square", "box", "block"),
               "triangle": ("triangle",), "cross": ("cross", "plus sign")}
COLOUR_WORDS = {"red": ("red",), "green": ("green",), "blue": ("blue",), "yellow": ("yellow",),
                "purple": ("purple", "violet")}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
TEXTURE_ADJECTIVES = {"solid": ("solid", "unpatterned"), "striped": ("striped", "stripy"),
                      "dotted": ("dotted", "spotted")}
TEXTURE_WITH = {"solid": ("with no pattern",), "striped": ("with stripes",), "dotted": ("with dots", "with spots")}
MOTION_WORDS = {
    "still": ("stays still", "does not move", "stays in one place"),
    "side_to_side": ("moves from side to side", "moves left and right", "sways back and forth sideways"),
    "up_and_down": ("moves up and down", "bobs up and down", "rises and sinks"),
    "circling": ("moves in a circle", "circles around", "travels round in a circle"),
    "bouncing": ("bounces off the edges of the frame", "bounces around the frame",
                 "moves diagonally and bounces off the edges"),
}
EVENT_WORDS = {"appears": ("appears", "comes into view", "shows up"),
               "disappears": ("disappears", "vanishes", "goes out of view"),
               "speeds_up": ("speeds up", "starts moving faster", "gets faster")}
# changes_colour: "{verb} {new colour}"
COLOUR_CHANGE_WORDS = ("turns", "changes colour to", "becomes")
TIME_WORDS = {"early": ("early on", "near the start", "soon after the start"),
              "halfway": ("halfway through", "midway through", "in the middle of the clip"),
              "late": ("near the end", "late in the clip", "towards the end")}
BACKGROUND_WORDS = {"plain": ("plain", "uniform"), "gradient": ("gradient", "shaded"),
                    "textured": ("textured", "patterned", "mottled")}
BACKGROUND_NOUNS = ("background", "backdrop")

# Sounds:
SOUND_NOUNS = {"tone": ("tone", "note"), "noise": ("bursts of noise", "noise bursts", "hisses of noise"),
               "chirp": ("chirps", "chirping sounds"), "clicks": ("clicks", "ticks", "clicking sounds")}
PITCH_WORDS = {"low": ("low", "deep"), "medium": ("medium", "middle"), "high": ("high", "shrill"),
               "rising": ("rising", "upward"), "falling": ("falling", "downward")}
# rhythm -> (adverb for a verb, adjective before a plural noun)
RHYTHM_WORDS = {"steady": (("continuously", "without a break"), ("unbroken", "continuous")),
                "slow": (("slowly", "at a slow pace"), ("slow", "unhurried")),
                "fast": (("quickly", "rapidly"), ("fast", "rapid"))}
ENVELOPE_WORDS = {"constant": ("at an even volume", "at a constant loudness"),
                  "fades_in": ("fading in", "growing louder"), "fades_out": ("fading out", "growing quieter")}
SPAN_WORDS = {"throughout": ("throughout", "the whole time"),
              "first_half": ("in the first half", "during the first half"),
              "second_half": ("in the second half", "during the second half")}
OFFSCREEN_WORDS = ("from off screen", "with no visible source", "from outside the picture")
BOUNCE_WORDS = ("each time the {obj} bounces off an edge", "whenever the {obj} hits an edge",
                "every time the {obj} bounces")
VISIBLE_WORDS = ("while the {obj} is visible", "as long as the {obj} is on screen", "only while the {obj} can be seen")
HEARD_PLURAL = ("are heard", "can be heard")

REFERENCES_PER_CLIP = 5
# FAVD's captions run roughly 25-80 words; a longer draw is redrawn (kept only if a scene yields too few shorter).
MAX_WORDS = 80
_NUMBERS = {1: "one", 2: "two", 3: "three"}


class _Writer:
    """One reference: every choice comes from this writer's generator."""

    def __init__(self, scene: dict, rng: np.random.Generator):
        self.scene, self.rng = scene, rng

    def pick(self, options):
        return options[int(self.rng.integers(len(options)))]

    def name(self, obj: dict, full: bool) -> str:
        shape = self.pick(SHAPE_WORDS[obj["shape"]])
        return f"{self.pick(COLOUR_WORDS[obj['colour']])} {shape}" if full else shape

    def noun_phrase(self, obj: dict) -> str:
        size = self.pick(SIZE_WORDS[obj["size"]]) + " " if self.rng.random() < 0.5 else ""
        return f"a {size}{self.name(obj, True)}"

    # ---- summary
    def summary(self) -> str:
        objects, sounds = self.scene["objects"], self.scene["sounds"]
        many = len(objects) > 1
        listed = f"{_NUMBERS[len(objects)]} {self.pick(('shapes', 'objects'))}" if many \
            else self.noun_phrase(objects[0])
        background = f"{self.pick(BACKGROUND_WORDS[self.scene['background']])} {self.pick(BACKGROUND_NOUNS)}"
        heard = " and ".join(self.sound_noun(s, article=True) for s in sounds)
        plural = len(sounds) > 1 or sounds[0]["kind"] != "tone"
        form = int(self.rng.integers(3))
        if form == 0:
            return f"{listed} {'are' if many else 'is'} shown on a {background} while {heard} " \
                   f"{'are' if plural else 'is'} heard."
        if form == 1:
            return f"on a {background}, the clip shows {listed}, with {heard}."
        return f"{listed} {'move' if many else 'moves'} about on a {background}, and {heard} " \
               f"{'are' if plural else 'is'} heard."

    def sound_noun(self, sound: dict, article: bool) -> str:
        noun = self.pick(SOUND_NOUNS[sound["kind"]])
        return f"a {noun}" if article and sound["kind"] == "tone" else ("some " + noun if article else noun)

    # ---- objects
    def appearance(self, obj: dict) -> str:
        size, colour = self.pick(SIZE_WORDS[obj["size"]]), self.pick(COLOUR_WORDS[obj["colour"]])
        form = int(self.rng.integers(3))
        if form == 0:
            name = self.name(obj, False)
            return f"the {name} is {size}, {colour} and {self.pick(TEXTURE_ADJECTIVES[obj['texture']])}"
        if form == 1:
            return f"the {size} {colour} {self.name(obj, False)} is {self.pick(TEXTURE_ADJECTIVES[obj['texture']])}"
        return f"the {self.name(obj, False)} is a {size} {colour} one {self.pick(TEXTURE_WITH[obj['texture']])}"

    def event(self, obj: dict) -> str:
        if obj["event"] == "changes_colour":
            verb = f"{self.pick(COLOUR_CHANGE_WORDS)} {self.pick(COLOUR_WORDS[obj['new_colour']])}"
        else:
            verb = self.pick(EVENT_WORDS[obj["event"]])
        when = self.pick(TIME_WORDS[obj["event_time"]])
        return f"{verb} {when}" if self.rng.random() < 0.6 else f"{when} {verb}"

    def object_sentences(self, obj: dict) -> list[str]:
        motion = self.pick(MOTION_WORDS[obj["motion"]])
        action = motion if obj["event"] == "none" else f"{motion} and {self.event(obj)}"
        if self.rng.random() < 0.5:
            return [f"{self.appearance(obj)}, and it {action}."]
        return [f"{self.appearance(obj)}.", f"it {action}."]

    # ---- sounds
    def sound_sentence(self, sound: dict) -> str:
        kind = sound["kind"]
        source = next((o for o in self.scene["objects"] if o["shape"] == sound["source"]), None)
        quality = self.pick(PITCH_WORDS[sound["pitch"]]) + " " if sound["pitch"] else ""
        if kind == "tone":
            subject = f"a {quality}{self.pick(SOUND_NOUNS['tone'])}"
            verb = "plays" if sound["rhythm"] == "steady" else self.pick(("beeps", "pulses"))
            rhythm = f" {verb} {self.pick(RHYTHM_WORDS[sound['rhythm']][0])}"
        else:
            adjective = self.pick(RHYTHM_WORDS[sound["rhythm"]][1]) + " " if sound["rhythm"] else ""
            subject = f"{adjective}{quality}{self.pick(SOUND_NOUNS[kind])}"
            rhythm = f" {self.pick(HEARD_PLURAL)}"
        if sound["relation"] == "offscreen":
            when = [self.pick(SPAN_WORDS[sound["span"]])]
            if sound["envelope"] is not None:
                when.append(self.pick(ENVELOPE_WORDS[sound["envelope"]]))
            relation = self.pick(OFFSCREEN_WORDS)
        else:
            when = []
            template = BOUNCE_WORDS if sound["relation"] == "bounce" else VISIBLE_WORDS
            relation = self.pick(template).format(obj=self.name(source, self.rng.random() < 0.5))
        heard = f"{subject}{rhythm}" + (f" {', '.join(when)}" if when else "")
        return f"{heard}, {relation}." if self.rng.random() < 0.5 else f"{relation}, {heard}."

    def caption(self) -> str:
        objects = [self.object_sentences(o) for o in self.scene["objects"]]
        sounds = [self.sound_sentence(s) for s in self.scene["sounds"]]
        order = self.rng.permutation(len(objects))
        sound_order = self.rng.permutation(len(sounds))
        parts = [self.summary()] + [s for i in order for s in objects[i]] + [sounds[i] for i in sound_order]
        return " ".join(parts)


def scene_references(scene: dict, seed: int, count: int = REFERENCES_PER_CLIP) -> list[str]:
    """``count`` different references of ``scene``; a pure function of (scene, seed)."""
    references: list[str] = []
    too_long: set[str] = set()
    rng = np.random.default_rng([seed, 11])
    for _ in range(50 * count):
        text = _Writer(scene, rng).caption()
        if len(text.split()) > MAX_WORDS:
            too_long.add(text)
        elif text not in references:
            references.append(text)
            if len(references) == count:
                return references
    references += sorted(too_long, key=lambda t: (len(t.split()), t))[:count - len(references)]
    if len(references) == count:
        return references
    raise ValueError(f"the grammar wrote fewer than {count} different references for a scene")
