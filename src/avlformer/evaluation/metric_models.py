"""Loading the models the learned metrics need, from local paths only (nothing is downloaded).

Each loader raises ``MetricUnavailable`` with a message naming what to install or pass when its files are absent,
so ``avlformer evaluate`` can skip that metric and still report the others.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from avlformer.error_text import one_line
from avlformer.evaluation.coco_metrics import EVAL_EXTRA

POS_TAGGER_RESOURCE = "taggers/averaged_perceptron_tagger_eng"


class MetricUnavailable(RuntimeError):
    """A metric cannot run here (model or data files missing); the message says what to install."""


def model_dir(path: str | os.PathLike | None, metric: str, flag: str, what: str) -> Path:
    if path is None:
        raise MetricUnavailable(f"{metric} skipped: no {what}; pass {flag} DIR (a local Hugging Face model folder)")
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise MetricUnavailable(f"{metric} skipped: {flag} {folder} is not a Hugging Face model folder "
                                "(no config.json there)")
    return folder


def load_pos_tagger(nltk_data: str | os.PathLike | None = None):
    """NLTK's averaged perceptron tagger (English), from ``nltk_data`` or NLTK's usual data folders.

    NLTK >= 3.9 only reads files under folders listed in ``nltk.data.path``, so ``nltk_data`` is added there."""
    try:
        import nltk
        from nltk.tag.perceptron import PerceptronTagger
    except ImportError:
        raise MetricUnavailable(f"EntityScore skipped: the nltk package is not installed ({EVAL_EXTRA})") from None
    install = ("install it with `python -m nltk.downloader -d DIR averaged_perceptron_tagger_eng` and pass "
               "--nltk-data DIR")
    if nltk_data is None:
        try:
            nltk.data.find(POS_TAGGER_RESOURCE + "/")
        except LookupError:
            raise MetricUnavailable(f"EntityScore skipped: NLTK's POS tagger ({POS_TAGGER_RESOURCE}) not found in "
                                    f"NLTK's data folders; {install}") from None
        return PerceptronTagger(lang="eng")
    root = Path(nltk_data).resolve()
    tagger_dir = root / POS_TAGGER_RESOURCE
    if not tagger_dir.is_dir():
        raise MetricUnavailable(f"EntityScore skipped: NLTK's POS tagger ({POS_TAGGER_RESOURCE}) not found in "
                                f"{nltk_data}; {install}")
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    return PerceptronTagger(lang="eng", loc=str(tagger_dir))


def from_folder(loader, folder: Path, metric: str):
    """``loader.from_pretrained(folder)`` offline; a missing package skips the metric, a broken folder (a file
    that is not JSON, weights that are truncated or hold pickled code, which is never run) is a one-line error
    naming it."""
    try:
        return loader.from_pretrained(folder, local_files_only=True)
    except ImportError as error:
        raise MetricUnavailable(f"{metric} skipped: loading {folder} needs a package that is not installed "
                                f"({error})") from None
    except Exception as error:  # a damaged or refused weights file surfaces as any of several library errors
        raise ValueError(f"{folder}: cannot be loaded as {loader.__name__} ({one_line(error)})") from None


def load_t5_encoder(path: str | os.PathLike | None, device: torch.device):
    """(tokenizer, T5EncoderModel in eval mode) from a local folder such as a copy of ``t5-base``."""
    from transformers import AutoTokenizer, T5EncoderModel

    folder = model_dir(path, "EntityScore", "--t5-model", "T5 model (t5-base)")
    tokenizer = from_folder(AutoTokenizer, folder, "EntityScore")
    model = from_folder(T5EncoderModel, folder, "EntityScore").to(device).eval()
    return tokenizer, model


def load_clip(path: str | os.PathLike | None, metric: str, device: torch.device):
    """(CLIPModel in eval mode, tokenizer, image processor) from a local folder such as a copy of
    ``openai/clip-vit-base-patch32``."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    folder = model_dir(path, metric, "--clip-model", "CLIP model (openai/clip-vit-base-patch32)")
    tokenizer = from_folder(AutoTokenizer, folder, metric)
    image_processor = from_folder(AutoImageProcessor, folder, metric)
    model = from_folder(CLIPModel, folder, metric).to(device).eval()
    return model, tokenizer, image_processor
