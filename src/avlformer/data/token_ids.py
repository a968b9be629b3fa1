"""bert-base-uncased reserved token ids and the shipped vocabulary's folder: the model and checkpoints need
these, but not the tokenizer (nor ``transformers``)."""

from importlib import resources
from pathlib import Path

PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 100, 101, 102, 103
# Every BERT vocabulary the decoder reads must hold these tokens at these ids.
RESERVED_TOKENS = {PAD_ID: "[PAD]", UNK_ID: "[UNK]", CLS_ID: "[CLS]", SEP_ID: "[SEP]", MASK_ID: "[MASK]"}
RESERVED_IDS = frozenset(RESERVED_TOKENS)


def default_vocab_dir() -> Path:
    """The bert-base-uncased vocabulary shipped inside the package (no download)."""
    return Path(str(resources.files("avlformer") / "resources" / "bert-base-uncased"))
