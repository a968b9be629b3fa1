"""A causal LM's own tokenizer as the caption tokenizer (docs/models.md): captions become the LM's ids, followed
by its end-of-text token, with no masking (the decoder's loss is next-token only), and decoded ids become text.

``load_tokenizer`` returns one for a folder holding a Hugging Face tokenizer but no BERT ``vocab.txt``; a
checkpoint of a causal-LM model stores the tokenizer's files beside its weights (``save``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from avlformer.data.masking import MaskedText, clean_caption_text

# The files that make a folder a Hugging Face tokenizer's (one of them suffices).
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


def is_hf_tokenizer_folder(folder: Path) -> bool:
    return folder.is_dir() and not (folder / "vocab.txt").is_file() and any(
        (folder / name).is_file() for name in TOKENIZER_FILES)


class CausalCaptionTokenizer:
    def __init__(self, folder: str | Path):
        from avlformer.modeling.hf_causal_lm import load_lm_tokenizer

        self.folder = Path(folder)
        self.hf = load_lm_tokenizer(self.folder)
        self.eos_token_id = int(self.hf.eos_token_id)

    def __len__(self) -> int:
        return len(self.hf)

    def encode(self, caption: str, max_seq_length: int) -> tuple[np.ndarray, int]:
        """The caption's ids then end-of-text, right-padded (with end-of-text) to ``max_seq_length``."""
        pieces = self.hf(clean_caption_text(caption), add_special_tokens=False)["input_ids"][:max_seq_length - 1]
        ids = np.full(max_seq_length, self.eos_token_id, dtype=np.int64)
        ids[:len(pieces)] = pieces
        return ids, len(pieces) + 1

    def make_train_text(self, caption: str, rng, *, max_seq_length: int, mask_prob: float,
                        max_masked_tokens: int) -> MaskedText:
        ids, text_len = self.encode(caption, max_seq_length)
        tensor = torch.from_numpy(ids)
        return MaskedText(tensor, tensor.clone(), torch.zeros(max_seq_length, dtype=torch.bool), text_len)

    def decode_caption(self, token_ids) -> str:
        ids = [int(i) for i in token_ids]
        if self.eos_token_id in ids:
            ids = ids[:ids.index(self.eos_token_id)]
        return self.hf.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True).strip()

    def save(self, folder: str | Path) -> None:
        self.hf.save_pretrained(str(folder))
