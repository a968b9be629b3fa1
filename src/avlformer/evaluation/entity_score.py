"""EntityScore (docs/evaluation.md, "EntityScore"): do the predicted entities (nouns) match the reference's?"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from avlformer.device import resolve_device

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class NounExtractor:
    """caption -> sorted list of distinct Porter-stemmed nouns (Penn tags containing ``NN``)."""

    def __init__(self, tagger):
        from nltk.stem import PorterStemmer
        from nltk.tokenize.destructive import NLTKWordTokenizer

        self.tagger = tagger
        self.stemmer = PorterStemmer()
        self.word_tokenizer = NLTKWordTokenizer()

    def __call__(self, caption: str) -> list[str]:
        tokens = [token for sentence in _SENTENCE_END.split(caption.strip()) if sentence
                  for token in self.word_tokenizer.tokenize(sentence)]
        nouns = {word for word, tag in self.tagger.tag(tokens) if "NN" in tag}
        return sorted({self.stemmer.stem(noun) for noun in nouns})


def entity_recall(predicted: list[str], reference: list[str]) -> float:
    """R: share of the reference nouns that the prediction contains."""
    reference_set = set(reference)
    return len(set(predicted) & reference_set) / len(reference_set)


def semantic_coverage(predicted_states: torch.Tensor, reference_states: torch.Tensor) -> float:
    """C from encoder states (P, L, D) and (R, L, D) padded to the same L: per predicted noun the best
    ``(mean over positions of cos + 1) / 2`` over reference nouns, capped at 1, averaged over predicted nouns."""
    if predicted_states.shape[1:] != reference_states.shape[1:]:
        raise ValueError(f"noun states must share (L, D): {tuple(predicted_states.shape)} vs "
                         f"{tuple(reference_states.shape)}")
    cosine = F.cosine_similarity(predicted_states[:, None].float(), reference_states[None].float(), dim=-1)
    similarity = (cosine.mean(dim=-1) + 1) / 2                   # (P, R)
    best = similarity.max(dim=1).values.clamp(max=1.0)             # (P,)
    return float(best.mean())


def harmonic_mean(recall: float, coverage: float) -> float:
    total = recall + coverage
    return 0.0 if total == 0 else 2 * recall * coverage / total


@dataclass
class EntityScoreResult:
    score: float | None                     # mean over scored items (None when nothing could be scored)
    per_item: dict[str, float] = field(default_factory=dict)
    unscored: list[str] = field(default_factory=list)  # ids where the prediction or reference has no noun


class EntityScorer:
    def __init__(self, tokenizer, encoder, tagger, device: torch.device | str = "cpu"):
        self.tokenizer = tokenizer
        self.encoder = encoder.eval()
        self.nouns = NounExtractor(tagger)
        self.device = resolve_device(device)

    def _encode_padded(self, predicted: list[str], reference: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Every noun encoded alone, both lists padded to one length: (P, L, D) and (R, L, D)."""
        batch = self.tokenizer(predicted + reference, padding=True, truncation=True, return_tensors="pt")
        states = self.encoder(input_ids=batch["input_ids"].to(self.device),
                              attention_mask=batch["attention_mask"].to(self.device)).last_hidden_state
        return states[:len(predicted)], states[len(predicted):]

    @torch.inference_mode()
    def score_pair(self, prediction: str, reference: str) -> float | None:
        """ES of one prediction against one reference; None when either has no noun."""
        predicted, referenced = self.nouns(prediction), self.nouns(reference)
        if not predicted or not referenced:
            return None
        coverage = semantic_coverage(*self._encode_padded(predicted, referenced))
        return harmonic_mean(entity_recall(predicted, referenced), coverage)

    def score(self, predictions: dict[str, str], references: dict[str, list[str]],
              progress: bool = False) -> EntityScoreResult:
        from tqdm.auto import tqdm

        result = EntityScoreResult(score=None)
        for image_id in tqdm(list(predictions), desc="EntityScore", disable=not progress):
            scores = [s for ref in references[image_id] if (s := self.score_pair(predictions[image_id], ref))
                      is not None]
            if scores:
                result.per_item[image_id] = sum(scores) / len(scores)
            else:
                result.unscored.append(image_id)
        if result.per_item:
            result.score = sum(result.per_item.values()) / len(result.per_item)
        return result
