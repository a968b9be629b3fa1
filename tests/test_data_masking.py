"""Caption -> token ids and the masked-language-model corruption of training captions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avlformer.data.masking import encode_caption, make_train_text, mask_tokens, num_to_mask, replacement_ids
from avlformer.data.token_ids import CLS_ID, MASK_ID, PAD_ID, RESERVED_IDS, SEP_ID
from avlformer.data.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def test_encode_caption_layout(tokenizer):
    ids, text_len = encode_caption("A dog barks &amp; runs.", tokenizer, 16)
    pieces = tokenizer("A dog barks & runs.", add_special_tokens=False)["input_ids"]
    assert text_len == len(pieces) + 2
    assert ids.dtype == np.int64 and ids.shape == (16,)
    assert ids[0] == CLS_ID and list(ids[1:text_len - 1]) == pieces and ids[text_len - 1] == SEP_ID
    assert (ids[text_len:] == PAD_ID).all()


def test_encode_caption_truncates_to_l_minus_2_wordpieces(tokenizer):
    caption = " ".join(["word"] * 50)
    ids, text_len = encode_caption(caption, tokenizer, 12)
    assert text_len == 12 and ids[0] == CLS_ID and ids[-1] == SEP_ID and (ids[1:11] != PAD_ID).all()


@pytest.mark.parametrize("text_len", [2, 3, 5, 6, 10, 40, 298, 300])
def test_mask_count_and_positions(tokenizer, text_len):
    ids = np.full(300, PAD_ID, dtype=np.int64)
    ids[0], ids[1:text_len - 1], ids[text_len - 1] = CLS_ID, 2000, SEP_ID
    rng = np.random.default_rng(text_len)
    inputs, masked = mask_tokens(ids, text_len, rng, mask_prob=0.25, max_masked_tokens=75,
                                 random_ids=replacement_ids(tokenizer))
    expected = min(max(round(0.25 * text_len), 1), 75)
    assert masked.sum() == expected == num_to_mask(text_len, 0.25, 75)
    assert not masked[0] and not masked[text_len:].any()
    assert (inputs[~masked] == ids[~masked]).all()
    assert ids[0] == CLS_ID and (ids[1:text_len - 1] == 2000).all()  # the original is not modified


def test_sep_can_be_masked(tokenizer):
    ids, text_len = encode_caption("a b c d", tokenizer, 10)
    hits = 0
    rng = np.random.default_rng(0)
    for _ in range(200):
        _, masked = mask_tokens(ids, text_len, rng, mask_prob=0.25, max_masked_tokens=75,
                                random_ids=replacement_ids(tokenizer))
        hits += bool(masked[text_len - 1])
    assert hits > 0


def test_targets_are_original_tokens_and_the_80_10_10_split(tokenizer):
    caption = "a woman in a red coat walks along a busy street while cars pass and a bell rings far away " * 3
    rng = np.random.default_rng(1234)
    original, _ = encode_caption(caption, tokenizer, 300)
    replacements = set(replacement_ids(tokenizer).tolist())
    counts = {"mask": 0, "random": 0, "keep": 0}
    for _ in range(300):
        text = make_train_text(caption, tokenizer, rng, max_seq_length=300, mask_prob=0.25, max_masked_tokens=75)
        assert text.input_ids.dtype == torch.int64 and text.masked_pos.dtype == torch.bool
        assert np.array_equal(text.target_ids.numpy(), original)
        positions = text.masked_pos.nonzero().flatten()
        for position in positions.tolist():
            token, source = int(text.input_ids[position]), int(original[position])
            if token == MASK_ID:
                counts["mask"] += 1
            elif token == source:
                counts["keep"] += 1
            else:
                assert token in replacements and token not in RESERVED_IDS
                counts["random"] += 1
    total = sum(counts.values())
    assert abs(counts["mask"] / total - 0.8) < 0.03
    assert abs(counts["random"] / total - 0.1) < 0.02
    assert abs(counts["keep"] / total - 0.1) < 0.02


def test_masking_is_reproducible_with_a_seeded_rng(tokenizer):
    def run(seed):
        text = make_train_text("a cat sleeps on a warm sofa", tokenizer, np.random.default_rng(seed),
                               max_seq_length=20, mask_prob=0.25, max_masked_tokens=75)
        return text.input_ids, text.masked_pos
    assert all(torch.equal(a, b) for a, b in zip(run(3), run(3)))
    first, _ = run(3)
    assert any(not torch.equal(first, run(seed)[0]) for seed in range(4, 20))


def test_replacement_ids_exclude_bracketed_entries(tokenizer):
    ids = replacement_ids(tokenizer)
    vocab = {index: token for token, index in tokenizer.get_vocab().items()}
    assert not set(ids.tolist()) & RESERVED_IDS
    assert all(not (vocab[i].startswith("[") and vocab[i].endswith("]") and len(vocab[i]) > 2) for i in ids)
    assert len(ids) > 25000
