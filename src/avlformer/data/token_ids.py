"""bert-base-uncased reserved token ids and the shipped vocabulary's folder: the model and checkpoints need
these, but not the tokenizer (nor ``transformers``)."""

from importlib import resources
from pathlib import Path

PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = 0, 100, 101, 102, 103
RESERVED_IDS = frozenset({PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID})


def default_vocab_dir() -> Path:
    """The bert-base-uncased vocabulary shipped inside the package (no download)."""
    return Path(str(resources.files("avlformer") / "resources" / "bert-base-uncased"))
