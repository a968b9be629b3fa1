"""Caption -> token ids, and the masked-language-model corruption of a training caption (docs/upstream.md §2.6)."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from avlformer.data.token_ids import CLS_ID, MASK_ID, PAD_ID, SEP_ID

MASK_FRACTION = 0.8      # of the chosen positions become [MASK]
RANDOM_FRACTION = 0.5    # of the rest become a random token; the others keep their token
_EMOJI = re.compile("[\U0001F600-\U0001F64F\U0001F300-\U0001F5FF\U0001F680-\U0001F6FF\U0001F1E0-\U0001F1FF]")


@dataclass
class MaskedText:
    input_ids: torch.Tensor   # int64 (L,): after masking
    target_ids: torch.Tensor  # int64 (L,): the original sequence
    masked_pos: torch.Tensor  # bool (L,)
    text_len: int             # [CLS] ... [SEP] inclusive


def clean_caption_text(text: str) -> str:
    """Upstream's pre-cleaning, before any tokenizer sees a caption: HTML entities unescaped, emoji removed."""
    return _EMOJI.sub("", html.unescape(text))


def encode_caption(caption: str, tokenizer: PreTrainedTokenizerBase, max_seq_length: int) -> tuple[np.ndarray, int]:
    """``[CLS] + wordpieces[:L-2] + [SEP]`` padded with ``[PAD]`` to ``max_seq_length``; returns (ids, text_len)."""
    if max_seq_length < 2:
        raise ValueError(f"max_seq_length must be at least 2 ([CLS] and [SEP]), got {max_seq_length}")
    pieces = tokenizer(clean_caption_text(caption), add_special_tokens=False)["input_ids"][: max_seq_length - 2]
    ids = np.full(max_seq_length, PAD_ID, dtype=np.int64)
    ids[0] = CLS_ID
    ids[1:len(pieces) + 1] = pieces
    ids[len(pieces) + 1] = SEP_ID
    return ids, len(pieces) + 2


@lru_cache(maxsize=8)
def replacement_ids(tokenizer: PreTrainedTokenizerBase) -> np.ndarray:
    """Vocabulary ids a masked position may be replaced with (cached per tokenizer: get_vocab is slow).

    Upstream drew uniformly from the whole vocabulary (and one past it, read as [UNK]); we skip every bracketed
    entry ([PAD], [UNK], [CLS], [SEP], [MASK], [unusedN]) since none of them occurs in real text."""
    return np.array(sorted(index for token, index in tokenizer.get_vocab().items()
                           if not (len(token) > 2 and token.startswith("[") and token.endswith("]"))),
                    dtype=np.int64)


def num_to_mask(text_len: int, mask_prob: float, max_masked_tokens: int) -> int:
    """``min(max(round(mask_prob * text_len), 1), max_masked_tokens)`` with Python's round, as upstream."""
    return min(max(round(mask_prob * text_len), 1), max_masked_tokens)


def mask_tokens(token_ids: np.ndarray, text_len: int, rng: np.random.Generator, *, mask_prob: float,
                max_masked_tokens: int, random_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Choose positions among 1..text_len-1 ([SEP] included, [CLS] and padding never) and corrupt them 80/10/10.
    Returns (masked input ids, bool masked positions); ``token_ids`` is left untouched."""
    count = min(num_to_mask(text_len, mask_prob, max_masked_tokens), text_len - 1)
    chosen = np.sort(rng.permutation(np.arange(1, text_len))[:count])
    inputs = token_ids.copy()
    to_mask = rng.random(count) < MASK_FRACTION
    to_random = ~to_mask & (rng.random(count) < RANDOM_FRACTION)
    inputs[chosen[to_mask]] = MASK_ID
    inputs[chosen[to_random]] = random_ids[rng.integers(0, len(random_ids), int(to_random.sum()))]
    masked = np.zeros(len(token_ids), dtype=bool)
    masked[chosen] = True
    return inputs, masked


def make_train_text(caption: str, tokenizer: PreTrainedTokenizerBase, rng: np.random.Generator, *,
                    max_seq_length: int, mask_prob: float, max_masked_tokens: int) -> MaskedText:
    """A training caption: tokenised, padded, MLM-masked. ``target_ids`` holds the original tokens (upstream's
    LM targets were taken from the already-masked list; that aliasing bug is not reproduced). A tokenizer with its
    own ``make_train_text`` (a causal LM's: no masking) makes the text itself."""
    own = getattr(tokenizer, "make_train_text", None)
    if own is not None:
        return own(caption, rng, max_seq_length=max_seq_length, mask_prob=mask_prob,
                   max_masked_tokens=max_masked_tokens)
    targets, text_len = encode_caption(caption, tokenizer, max_seq_length)
    inputs, masked = mask_tokens(targets, text_len, rng, mask_prob=mask_prob, max_masked_tokens=max_masked_tokens,
                                 random_ids=replacement_ids(tokenizer))
    return MaskedText(torch.from_numpy(inputs), torch.from_numpy(targets), torch.from_numpy(masked), text_len)
