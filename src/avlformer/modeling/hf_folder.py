"""Local Hugging Face model folders (or Hub ids, as their cached snapshot) as parts (docs/models.md): the checks
made before any weight is read, the architecture rebuilt from a stored ``config.json``, weights from safetensors
only, and the hash naming the weights a LoRA adapter was trained on. Folder code runs only with
``trust_remote_code``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path
from typing import Any

import torch

from avlformer.json_files import read_json

HF_CONFIG_NAME = "config.json"
TIMM_TYPE = "timm_wrapper"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")  # org/name, optionally @revision
# What a part needs from a Hub repository: never pickled weights; a model's own code only when it may run.
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]
PICKLED_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")


def resolve_model_source(source: str, what: str, trust_remote_code: bool = False) -> str:
    """The local folder of ``source``: itself when it is a path (or not shaped like a Hub id), else the Hub
    snapshot of ``org/name[@revision]``; a Hub id that cannot be had (offline and not cached, unknown, gated) is a
    one-line error."""
    if Path(source).exists() or not HUB_ID.match(source):
        return source
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo_id, _, revision = source.partition("@")
    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        return snapshot_download(repo_id, revision=revision or None, local_files_only=offline,
                                 allow_patterns=HUB_FILES + (["*.py"] if trust_remote_code else []))
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub could not be reached"
        raise FileNotFoundError(f"{source}: no such {what} folder, and this Hub id is not in the local cache "
                                f"({why}); download it once online, or give a folder") from None
    except (HfHubHTTPError, OSError, ValueError) as error:
        raise FileNotFoundError(f"{source}: no such {what} folder, and the Hub gives no model by this id "
                                f"({str(error).splitlines()[0]})") from None


def check_model_folder(path: str, what: str) -> Path:
    """The folder of a Hugging Face model, after checking it holds a ``config.json`` and safetensors weights;
    one-line errors name the folder and what is wrong."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: {what} folder not found (download it once, e.g. "
                                f"`hf download <repo> --local-dir {folder}`)")
    if not (folder / HF_CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{folder}: no {HF_CONFIG_NAME}; not a Hugging Face model folder ({what})")
    if not safetensors_files(folder):
        pickled = [name for name in PICKLED_NAMES if (folder / name).is_file()]
        if pickled:
            raise ValueError(f"{folder}: only pickled weights ({pickled[0]}); this framework reads safetensors "
                             f"only. Convert once: python -c \"from transformers import AutoModel; "
                             f"AutoModel.from_pretrained('{folder}').save_pretrained('{folder}', "
                             f"safe_serialization=True)\" (review the folder first: loading a pickle runs code)")
        raise FileNotFoundError(f"{folder}: no *.safetensors weights ({what})")
    return folder


def safetensors_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def read_model_config(folder: Path, what: str) -> dict[str, Any]:
    """A folder's ``config.json``; a timm model's (``architecture``, no ``model_type``) is read as transformers
    reads it, as a ``timm_wrapper`` model."""
    config = read_json(folder / HF_CONFIG_NAME, f"{what} config")
    if isinstance(config, dict) and "model_type" not in config and isinstance(config.get("architecture"), str):
        config = {**config, "model_type": TIMM_TYPE}
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ValueError(f"{folder / HF_CONFIG_NAME}: no 'model_type'; not a Hugging Face model config ({what})")
    return config


def config_object(values: dict[str, Any], trust_remote_code: bool = False):
    """A ``PretrainedConfig`` from a stored ``config.json`` dict (no file, no network)."""
    from transformers import AutoConfig

    values = dict(values)
    model_type = values.pop("model_type", None)
    try:
        return AutoConfig.for_model(model_type, **values)
    except (KeyError, ValueError) as error:
        hint = "" if trust_remote_code else " (a model type defined by code in its folder needs trust_remote_code)"
        raise ValueError(f"model_type {model_type!r} is not a transformers architecture{hint}: {error}") from None


def weights_sha256(folder: str | Path) -> str:
    """SHA-256 over a folder's safetensors files (names and bytes, in name order): which base weights these are."""
    digest = hashlib.sha256()
    for path in safetensors_files(Path(folder)):
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def read_folder_state(folder: Path, auto_class, trust_remote_code: bool = False) -> dict[str, torch.Tensor]:
    """The weights of a folder as ``auto_class`` names them (transformers resolves tied and renamed tensors),
    read from safetensors only."""
    return auto_class.from_pretrained(str(folder), use_safetensors=True, local_files_only=True,
                                      trust_remote_code=trust_remote_code, dtype=torch.float32).state_dict()


@contextlib.contextmanager
def cpu_build():
    """Build a transformers model on the CPU even inside build_on_meta (transformers keeps some computed tensors
    as plain attributes or non-persistent buffers, e.g. VideoMAE's sinusoidal table, that a meta build would
    leave without values). A build meant for the meta device draws its random weights from a forked generator:
    like a meta build of any other part it leaves the global one alone, so a model's initial weights do not
    depend on whether something (the training log's size line) built it on meta first."""
    forked = torch.random.fork_rng(devices=[]) if torch.get_default_device().type == "meta" else \
        contextlib.nullcontext()
    with forked, torch.device("cpu"):
        yield


def set_hf_checkpointing(model, enabled: bool) -> None:
    """Turn a transformers model's activation checkpointing on or off (non-reentrant, so frozen inputs are fine)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        return
    # transformers 5 renamed gradient_checkpointing_* to activation_checkpointing_*; 4.x has only the former.
    name = "activation_checkpointing" if hasattr(model, "activation_checkpointing_enable") else "gradient_checkpointing"
    if enabled:
        getattr(model, f"{name}_enable")(**{f"{name}_kwargs": {"use_reentrant": False}})
    elif hf_checkpointing(model):
        getattr(model, f"{name}_disable")()


def hf_checkpointing(model) -> bool:
    """Whether it is on (the property's name changed in transformers 5)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name):
            return bool(getattr(model, name))
    return False
