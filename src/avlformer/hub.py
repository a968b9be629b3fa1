"""``AVLFormer`` in the Hugging Face idiom: ``from_pretrained``, ``save_pretrained``, ``push_to_hub``, on the
project's checkpoint folder (plus a README.md model card); a Hub id is resolved to its local snapshot.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from huggingface_hub import ModelHubMixin

from avlformer.data.recipe import PreprocessRecipe
from avlformer.device import resolve_device
from avlformer.model_card import CARD_NAME, PIPELINE_TAG, read_card_metadata, write_model_card
from avlformer.modeling import avlformer as modeling

# What a Hub snapshot needs to hold for any of the layouts load_model reads (ours or a released model.bin).
# vocab.txt: the BERT decoder's vocabulary; merges.txt and *.model: a causal LM's own tokenizer (with its *.json).
SNAPSHOT_PATTERNS = ["*.json", "*.safetensors", "model.bin", "vocab.txt", "merges.txt", "*.model", CARD_NAME]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def resolve_checkpoint(name_or_path: str | os.PathLike, *, revision: str | None = None,
                       cache_dir: str | os.PathLike | None = None, local_files_only: bool = False,
                       token: str | bool | None = None, force_download: bool = False) -> Path:
    """A local checkpoint path as given, else the local snapshot folder of the Hub model ``name_or_path``."""
    path = Path(name_or_path)
    if path.exists() or path.is_symlink():
        return path
    name = os.fspath(name_or_path)
    if not _HUB_ID.match(name):
        raise FileNotFoundError(f"{name}: no such checkpoint file or folder")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = local_files_only or constants.HF_HUB_OFFLINE
    try:
        folder = snapshot_download(repo_id=name, revision=revision, cache_dir=cache_dir,
                                   local_files_only=local_files_only, token=token, force_download=force_download,
                                   allow_patterns=SNAPSHOT_PATTERNS)
    except LocalEntryNotFoundError:
        where = cache_dir or constants.HF_HUB_CACHE
        how = "offline (HF_HUB_OFFLINE=1 or local_files_only)" if offline else "and the Hub could not be reached"
        raise FileNotFoundError(f"{name}: no such checkpoint file or folder, and no Hub model of that id in the "
                                f"Hugging Face cache {where} ({how})") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{name}: no such checkpoint file or folder, and no such model on the Hub "
                                f"(or it is private: log in with `hf auth login`)") from None
    except (HfHubHTTPError, OSError, ValueError) as error:
        raise FileNotFoundError(f"{name}: cannot fetch from the Hub: {str(error).splitlines()[0]}") from None
    return Path(folder)


class AVLFormer(modeling.AVLFormer, ModelHubMixin, library_name="avlformer", pipeline_tag=PIPELINE_TAG,
                tags=["avlformer", "audio-visual", "video-captioning"]):
    """The AVLFormer model with the Hub methods, its ``recipe``, ``vocab_dir``, ``source`` (where it was loaded
    from) and ``metrics`` / ``metrics_split`` (its model card's, kept by a later ``save_pretrained``)."""

    recipe: PreprocessRecipe = PreprocessRecipe.paper()
    vocab_dir: Path | None = None
    source: str | None = None
    metrics: dict[str, float] | None = None
    metrics_split: str | None = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *,
                        device: str | torch.device = "cpu", strict: bool = True, revision: str | None = None,
                        cache_dir: str | os.PathLike | None = None, local_files_only: bool = False,
                        token: str | bool | None = None, force_download: bool = False,
                        **unused: Any) -> "AVLFormer":
        """Load a checkpoint folder, an upstream folder, a released ``model.bin`` or a Hub model id, in eval mode
        on ``device``."""
        if unused:
            raise TypeError(f"from_pretrained: unknown argument(s) {', '.join(sorted(unused))}")
        from avlformer.modeling.checkpoint import checkpoint_recipe, checkpoint_vocab_dir, load_model

        path = resolve_checkpoint(pretrained_model_name_or_path, revision=revision, cache_dir=cache_dir,
                                  local_files_only=local_files_only, token=token, force_download=force_download)
        model, _ = load_model(path, resolve_device(device), strict=strict, model_class=cls)
        model.recipe = checkpoint_recipe(path)
        model.vocab_dir = checkpoint_vocab_dir(path)
        model.source = os.fspath(pretrained_model_name_or_path)
        model.metrics, model.metrics_split = _card_metrics(path)
        return model.eval()

    def save_pretrained(self, save_directory: str | os.PathLike, *, config: Any = None, repo_id: str | None = None,
                        push_to_hub: bool = False, model_card_kwargs: Mapping[str, Any] | None = None,
                        **push_to_hub_kwargs: Any) -> str | None:
        """Write the checkpoint files and model card into ``save_directory`` (other files there are kept; each of
        ours is replaced whole). ``model_card_kwargs``: ``metrics``, ``split``, ``training_args``,
        ``model_name``. Returns the commit URL when ``push_to_hub``."""
        if config is not None:
            raise ValueError("save_pretrained: the saved config is the model's own (model.config); "
                             "change it before saving instead of passing config=")
        target = Path(save_directory)
        target.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target))
        try:
            self._save_pretrained(staging, **dict(model_card_kwargs or {}))
            for item in sorted(staging.iterdir()):
                os.replace(item, target / item.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if push_to_hub:
            return self.push_to_hub(repo_id or target.name, model_card_kwargs=model_card_kwargs,
                                    **push_to_hub_kwargs)
        return None

    def _save_pretrained(self, save_directory: Path, *, metrics: Mapping[str, Any] | None = None,
                         split: str | None = None, training_args: Mapping[str, Any] | None = None,
                         model_name: str | None = None) -> None:
        from avlformer.modeling.checkpoint import write_checkpoint_files

        write_checkpoint_files(save_directory, self.state_dict(), self.config, self.recipe,
                               vocab_dir=self.vocab_dir)
        if metrics is None:
            metrics, split = self.metrics, split or self.metrics_split
        write_model_card(save_directory, self.config, self.recipe, metrics, split, training_args,
                         model_name=model_name or Path(save_directory).name)

    def push_to_hub(self, repo_id: str, *, model_card_kwargs: Mapping[str, Any] | None = None,
                    **kwargs: Any) -> str:
        """Upload the ``save_pretrained`` folder to the Hub model ``repo_id`` in one commit."""
        card = {"model_name": repo_id, **dict(model_card_kwargs or {})}
        return super().push_to_hub(repo_id, model_card_kwargs=card, **kwargs)


def _card_metrics(path: Path) -> tuple[dict[str, float] | None, str | None]:
    """The metric values (by the evaluator's names) and split recorded in a checkpoint's model card, if any."""
    from avlformer.model_card import METRIC_NAMES
    from avlformer.modeling.checkpoint import checkpoint_folder

    folder, _ = checkpoint_folder(path)
    card = folder / CARD_NAME
    if not card.is_file():
        return None, None
    import yaml

    try:
        results = read_card_metadata(card)["model-index"][0]["results"][0]
        by_display = {display: key for key, display in METRIC_NAMES.items()}
        metrics = {by_display.get(m["name"], m["name"]): float(m["value"]) for m in results["metrics"]}
        return metrics, results.get("dataset", {}).get("split")
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, yaml.YAMLError):
        return None, None  # a hand-written card without our model-index: nothing to carry over
