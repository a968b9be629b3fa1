"""CIDEr-D as a per-caption training reward, with document frequencies fixed from the training split, and its
tokenisation in Python (docs/training.md, "The reward").
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from typing import Iterable, Mapping, Sequence

MAX_N = 4
SIGMA = 6.0

_CONTRACTION = re.compile(r"(?<=[^\W_])(n't|'(?:s|re|ve|ll|d|m))(?![^\W_])")
_SPLIT_WORDS = re.compile(r"\b(can)(not)\b|\b(gon|wan)(na)\b|\b(got)(ta)\b")
# PTB's names for brackets; pycocoevalcap drops only upper-case -LRB-/-RRB-/-LCB-/-RCB- after lower-casing, so
# validation keeps them as words, and so does the reward.
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
# A token: a contraction split off above; letters/digits, possibly joined by inner - . : / (PTB keeps
# "well-known", "3.5", "5:30"); a bracket; or a symbol PTB keeps as its own token. The rest is the punctuation
# validation removes (. , ; : ? ! - -- ... and quotes).
_TOKEN = re.compile(r"(?:n't|'(?:s|re|ve|ll|d|m))(?![^\W_])|[^\W_]+(?:[-.:/][^\W_]+)*|[()\[\]{}]|[%&/$#+=@*<>~^|]")


def reward_words(text: str) -> list[str]:
    """Lower-cased words without punctuation, as validation's PTB tokenisation gives them (contractions split,
    brackets named), for the captions the model writes."""
    text = _CONTRACTION.sub(r" \1", text.lower())
    text = _SPLIT_WORDS.sub(lambda m: " ".join(g for g in m.groups() if g), text)
    return [_BRACKETS.get(token, token) for token in _TOKEN.findall(text)]


def ngram_counts(words: Sequence[str]) -> Counter:
    counts: Counter = Counter()
    for n in range(1, MAX_N + 1):
        for start in range(len(words) - n + 1):
            counts[tuple(words[start:start + n])] += 1
    return counts


class _Vector:
    """tf-idf weights split by n-gram order, their norms, and the bigram count (the length CIDEr-D penalises)."""

    __slots__ = ("weights", "norms", "length")

    def __init__(self, counts: Counter, idf):
        self.weights = [dict() for _ in range(MAX_N)]
        squares = [0.0] * MAX_N
        self.length = 0
        for ngram, count in counts.items():
            order = len(ngram) - 1
            weight = float(count) * idf(ngram)
            self.weights[order][ngram] = weight
            squares[order] += weight * weight
            if order == 1:
                self.length += count
        self.norms = [math.sqrt(value) for value in squares]


class CiderD:
    """Per-caption CIDEr-D against each video's references. ``references`` ({video key: [tokenised reference,
    ...]}, every training video) fix the document frequencies; their vectors are built once, here."""

    def __init__(self, references: Mapping[str, Sequence[Sequence[str]]]):
        if not references:
            raise ValueError("CIDEr-D needs at least one video with reference captions")
        empty = [key for key, refs in references.items() if not refs]
        if empty:
            raise ValueError(f"{len(empty)} video(s) have no reference caption, e.g. {empty[0]!r}")
        ref_counts = {key: [ngram_counts(ref) for ref in refs] for key, refs in references.items()}
        self.document_frequency: dict[tuple, int] = defaultdict(int)
        for counts in ref_counts.values():
            for ngram in set().union(*counts):
                self.document_frequency[ngram] += 1
        self.log_videos = math.log(float(len(ref_counts)))
        self.reference_vectors = {key: [_Vector(c, self._idf) for c in counts] for key, counts in ref_counts.items()}
        self.reference_lengths = {key: sum(len(ref) for ref in refs) / len(refs) for key, refs in references.items()}

    def _idf(self, ngram: tuple) -> float:
        return self.log_videos - math.log(max(1.0, float(self.document_frequency.get(ngram, 0))))

    def score(self, key: str, words: Sequence[str]) -> float:
        refs = self.reference_vectors.get(key)
        if refs is None:
            raise KeyError(f"no reference captions for video {key!r}")
        hyp = _Vector(ngram_counts(words), self._idf)
        total = 0.0
        for ref in refs:
            penalty = math.exp(-((hyp.length - ref.length) ** 2) / (2 * SIGMA ** 2))
            per_order = 0.0
            for order in range(MAX_N):
                ref_weights = ref.weights[order]
                value = 0.0
                for ngram, weight in hyp.weights[order].items():
                    other = ref_weights.get(ngram, 0.0)
                    value += min(weight, other) * other
                if hyp.norms[order] != 0 and ref.norms[order] != 0:
                    value /= hyp.norms[order] * ref.norms[order]
                per_order += value * penalty
            total += per_order / MAX_N
        return total / len(refs) * 10.0

    def score_many(self, keys: Iterable[str], captions: Iterable[Sequence[str]]) -> list[float]:
        return [self.score(key, words) for key, words in zip(keys, captions)]


def has_repeated_ngram(words: Sequence[str], n: int = 4) -> bool:
    """Whether some n-gram occurs twice: the signature of the degenerate loops metric optimisation can learn."""
    seen = set()
    for start in range(len(words) - n + 1):
        gram = tuple(words[start:start + n])
        if gram in seen:
            return True
        seen.add(gram)
    return False
