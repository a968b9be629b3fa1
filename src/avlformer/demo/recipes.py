"""The demo's recipes (``avlformer demo --recipe NAME``): a training flag file under configs/ and, for a recipe of
Hugging Face parts, a parts file of tiny random models that the demo builds into ``<workdir>/models/`` with a
word-level tokenizer over the demo's caption words (docs/models.md).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avlformer.atomic import atomic_folder
from avlformer.data import synth
from avlformer.json_files import read_json

PART_FLAGS = ("video_encoder", "audio_encoder", "decoder")
TOKENIZER_SPECIALS = ("<pad>", "<unk>", "<eos>")


@dataclass(frozen=True)
class Recipe:
    name: str
    config: str              # training flag file under configs/
    parts: str | None = None  # file under configs/ of the Hugging Face parts to build, if any


RECIPES = {
    "paper": Recipe("paper", "demo_tiny.json"),
    "causal-lm": Recipe("causal-lm", "demo_causal_lm.json", "demo_causal_lm_parts.json"),
}


def configs_dir() -> Path:
    """configs/ of this checkout (the package lives in <repo>/src/avlformer), else under the cwd."""
    repo_configs = Path(__file__).resolve().parents[3] / "configs"
    return repo_configs if repo_configs.is_dir() else Path("configs")


def caption_words(texts) -> list[str]:
    """Every word and punctuation mark of ``texts`` (lower-cased), sorted: a word-level tokenizer's vocabulary."""
    from tokenizers import pre_tokenizers

    split = pre_tokenizers.BertPreTokenizer().pre_tokenize_str
    return sorted({word for text in texts for word, _ in split(text.lower())})


def demo_words(prompt: str) -> list[str]:
    """Every word of every caption the demo's templates can write, and of ``prompt``."""
    names = list(synth.ATTRIBUTE_VALUES)
    captions = (synth.make_caption(dict(zip(names, values)))
                for values in itertools.product(*(synth.ATTRIBUTE_VALUES[name] for name in names)))
    return caption_words([prompt, *captions])


def save_word_tokenizer(folder: Path, words: list[str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate((*TOKENIZER_SPECIALS, *words))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()  # joins words with spaces, none before punctuation
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")
    fast.save_pretrained(str(folder))
    return fast


def _save_processor(folder: Path, values: dict) -> None:
    """The part's preprocessor_config.json: a feature extractor's through its class (so its defaults are
    written out), an image processor's as given (the parts read only its mean and std)."""
    from transformers.models.auto.feature_extraction_auto import feature_extractor_class_from_name

    values = dict(values)
    kind = values.pop("feature_extractor_type", None)
    if kind is None:
        (folder / "preprocessor_config.json").write_text(json.dumps(values, indent=1))
        return
    cls = feature_extractor_class_from_name(kind)
    if cls is None:
        raise ValueError(f"unknown feature_extractor_type {kind!r}")
    cls(**values).save_pretrained(str(folder))


def build_part(flag: str, spec: dict, folder: Path, seed: int, words: list[str]) -> Path:
    """One tiny random model (+ its processor, or for the decoder a word-level tokenizer of ``words``) saved in
    ``folder``."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    values = dict(spec.get("config", {}))
    with atomic_folder(folder) as staging, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if flag == "decoder":
            tokenizer = save_word_tokenizer(staging, words)
            eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
            values.update(vocab_size=len(tokenizer), eos_token_id=eos, bos_token_id=eos, pad_token_id=pad)
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(spec["model_type"], **values))
        else:
            model = AutoModel.from_config(AutoConfig.for_model(spec["model_type"], **values))
            _save_processor(staging, spec["processor"])
        model.save_pretrained(str(staging), safe_serialization=True)
    return folder


def build_parts(parts_file: Path, models_dir: Path, words: list[str]) -> dict[str, str]:
    """Build every part the parts file describes into ``models_dir`` (a decoder's tokenizer knows ``words``);
    returns the training flags naming them (``{"video_encoder": "hf:<folder>", ...}``)."""
    spec = read_json(parts_file, "demo parts file")
    unknown = set(spec) - {"seed", *PART_FLAGS}
    if unknown:
        raise ValueError(f"{parts_file}: unknown key(s) {', '.join(sorted(unknown))} (parts: {', '.join(PART_FLAGS)})")
    flags = {}
    for index, flag in enumerate(name for name in PART_FLAGS if name in spec):
        folder = models_dir / f"{spec[flag]['model_type']}-demo"  # the folder's name names the part in logs
        build_part(flag, spec[flag], folder, int(spec.get("seed", 0)) + index, words)
        flags[flag] = f"hf:{folder.resolve()}"
    return flags
