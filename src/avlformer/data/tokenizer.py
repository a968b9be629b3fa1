"""The bert-base-uncased WordPiece tokenizer (vocab shipped in the package) and upstream's caption decoding."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from transformers import BertTokenizerFast

from avlformer.data.causal_tokenizer import CausalCaptionTokenizer, is_hf_tokenizer_folder
from avlformer.data.masking import clean_caption_text
from avlformer.data.token_ids import RESERVED_IDS, RESERVED_TOKENS, default_vocab_dir

@lru_cache(maxsize=4)
def load_tokenizer(vocab_dir: str | None = None):
    """Tokenizer from a folder holding ``vocab.txt`` (default: the copy shipped with the package), or, for a
    folder holding a Hugging Face tokenizer and no ``vocab.txt`` (a causal LM's), that tokenizer
    (data/causal_tokenizer.py)."""
    folder = Path(vocab_dir) if vocab_dir else default_vocab_dir()
    if is_hf_tokenizer_folder(folder):
        return CausalCaptionTokenizer(folder)
    vocab = folder / "vocab.txt" if folder.is_dir() else folder
    if not vocab.is_file():
        raise FileNotFoundError(f"{vocab}: no vocab.txt for the bert-base-uncased tokenizer")
    # transformers 5 ignores the `vocab_file=` keyword (empty vocabulary); from_pretrained on the folder works in 4 and 5.
    tokenizer = BertTokenizerFast.from_pretrained(str(vocab.parent), do_lower_case=True, local_files_only=True)
    wrong = {i: t for i, t in RESERVED_TOKENS.items() if tokenizer.convert_ids_to_tokens(i) != t}
    if wrong:
        raise ValueError(f"{vocab}: ids {sorted(wrong)} must hold {list(wrong.values())} (the bert-base-uncased "
                         "reserved ids the decoder uses)")
    return tokenizer


def caption_vocab(captions) -> list[str]:
    """A vocab.txt's lines: the shipped bert-base-uncased vocabulary cut down to its first 104 entries (padding,
    unused, the reserved ids, so they keep their ids) and the WordPieces ``captions`` use, in their original
    order. Those captions tokenize to the same pieces as with the full vocabulary (WordPiece takes the longest
    known prefix, which is kept), and a decoder for a small closed vocabulary (the scenes data's) needs an LM head
    of this size instead of 30,522 rows."""
    full = load_tokenizer()
    used = {i for caption in captions
            for i in full(clean_caption_text(caption), add_special_tokens=False)["input_ids"]}
    return full.convert_ids_to_tokens(sorted(set(range(max(RESERVED_TOKENS) + 1)) | used))


def decode_caption(token_ids, tokenizer: BertTokenizerFast | None = None) -> str:
    """Token ids -> caption text as upstream prints it: special ids dropped, WordPieces joined, spacing cleaned.
    A tokenizer with its own ``decode_caption`` (a causal LM's) decodes its own ids."""
    tokenizer = tokenizer or load_tokenizer()
    if hasattr(tokenizer, "decode_caption"):
        return tokenizer.decode_caption(token_ids)
    ids = [int(i) for i in token_ids if int(i) not in RESERVED_IDS]
    text = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)
    return text.replace(" do not", " don't")
