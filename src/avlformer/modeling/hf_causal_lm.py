"""A causal language model from ``transformers`` as the decoder (``text.type`` ``hf_causal_lm``; docs/models.md,
"The causal-LM decoder"): projected AV tokens, then the prompt, form the prefix of the caption; training modes
``full``, ``frozen`` and ``lora``; decoding through the LM's own forward and cache.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from avlformer.atomic import atomic_folder
from avlformer.config_fields import JsonDataclass
from avlformer.modeling.generation import SpecialIds
from avlformer.modeling.hf_folder import (check_model_folder, config_object, cpu_build, read_folder_state,
                                          read_model_config, set_hf_checkpointing, weights_sha256)
from avlformer.modeling.meta_device import check_state_dict
from avlformer.modeling.sampling import drawn_token_scores

TRAINING_MODES = ("full", "frozen", "lora")
PROJECTORS = ("linear", "mlp")
DEFAULT_PROMPT = "Describe what is seen and heard:"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass
class HFCausalLMConfig(JsonDataclass):
    hf_config: dict = field(default_factory=dict)  # the LM folder's config.json
    path: str = ""                                  # the folder it came from (weights, tokenizer)
    img_feature_dim: int = 512
    projector: str = "mlp"
    prompt: str = DEFAULT_PROMPT
    prompt_ids: list[int] = field(default_factory=list)  # the prompt through the LM's tokenizer
    eos_token_id: int = 0
    training: str = "lora"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = field(default_factory=list)  # empty: peft's default for the architecture
    lr_multiplier: float = 1.0
    weights_sha256: str = ""                        # of the folder's safetensors (what a LoRA adapter sits on)
    trust_remote_code: bool = False

    def __post_init__(self):
        problems = []
        if self.training not in TRAINING_MODES:
            problems.append(f"training {self.training!r} must be one of {', '.join(TRAINING_MODES)}")
        if self.projector not in PROJECTORS:
            problems.append(f"projector {self.projector!r} must be one of {', '.join(PROJECTORS)}")
        if not isinstance(self.hf_config.get("model_type"), str):
            problems.append("hf_config has no model_type (build this config with HFCausalLMConfig.from_folder)")
        if self.lora_rank < 1 or self.lr_multiplier < 0:
            problems.append("lora_rank must be >= 1 and lr_multiplier >= 0")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_folder(cls, path: str, **values: Any) -> "HFCausalLMConfig":
        """The config of the causal LM in ``path``: its ``config.json`` and tokenizer are read, its weights are
        not (they are hashed for a LoRA part)."""
        folder = check_model_folder(path, "causal LM")
        hf_config = read_model_config(folder, "causal LM")
        names = hf_config.get("architectures") or []  # none named: let AutoModelForCausalLM decide
        causal = not names or any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in names)
        if hf_config.get("is_encoder_decoder") or not causal:
            raise ValueError(f"{folder}: {hf_config.get('architectures') or hf_config['model_type']} is not a "
                             f"causal language model (AutoModelForCausalLM)")
        tokenizer = load_lm_tokenizer(folder, values.get("trust_remote_code", False))
        prompt = values.get("prompt", DEFAULT_PROMPT)
        values.update(prompt_ids=tokenizer(prompt, add_special_tokens=False)["input_ids"],
                      eos_token_id=int(tokenizer.eos_token_id))
        config = cls(hf_config=hf_config, path=str(folder), **values)
        if config.training == "lora":
            config.weights_sha256 = weights_sha256(folder)
        return config

    @property
    def hidden_size(self) -> int:
        return int(config_object(self.hf_config, self.trust_remote_code).get_text_config().hidden_size)

    @property
    def max_position_embeddings(self) -> int:
        hf = self.hf_config
        return int(hf.get("max_position_embeddings") or hf.get("n_positions") or 2048)

    def check_fits(self, model_config) -> None:
        if model_config.learn_mask_enabled:
            raise ValueError("the learned AV attention mask belongs to the BERT decoder; set learn_mask_enabled "
                             "false with text.type hf_causal_lm")
        needed = model_config.num_av_tokens + len(self.prompt_ids) + model_config.max_seq_length
        if needed > self.max_position_embeddings:
            raise ValueError(f"{model_config.num_av_tokens} AV tokens + {len(self.prompt_ids)} prompt tokens + "
                             f"{model_config.max_seq_length} caption tokens exceed the LM's "
                             f"{self.max_position_embeddings} positions")

    def describe(self) -> str:
        name = Path(self.path).name or self.hf_config["model_type"]
        return f"{name} causal LM ({self.training})"


def load_lm_tokenizer(folder: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True,
                                                  trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise ValueError(f"{folder}: cannot load the LM's tokenizer: {str(error).splitlines()[0]}") from None
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{folder}: the tokenizer has no end-of-text token (eos_token)")
    return tokenizer


class HFCausalLMDecoder(nn.Module):
    def __init__(self, config: HFCausalLMConfig):
        super().__init__()
        from transformers import AutoModelForCausalLM

        self.config = config
        hidden = config.hidden_size
        with cpu_build():  # on the CPU even inside build_on_meta
            self.lm = AutoModelForCausalLM.from_config(config_object(config.hf_config, config.trust_remote_code),
                                                       trust_remote_code=config.trust_remote_code)
            if config.training == "lora":
                self.lm = _inject_lora(self.lm, config)
        if config.projector == "linear":
            self.projector = nn.Linear(config.img_feature_dim, hidden)
        else:
            self.projector = nn.Sequential(nn.Linear(config.img_feature_dim, hidden), nn.GELU(),
                                           nn.Linear(hidden, hidden))
        self.apply_training_mode()

    def apply_training_mode(self) -> None:
        """requires_grad as the training mode says: every LM weight, none, or the adapters only."""
        mode = self.config.training
        for name, param in self.lm.named_parameters():
            param.requires_grad_(mode == "full" or (mode == "lora" and "lora_" in name))

    def retie_weights(self) -> None:
        """Tie the output embeddings to the input ones again where the LM ties them (after loading by
        assignment, which gives each name its own tensor)."""
        self.lm.tie_weights()

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        set_hf_checkpointing(self.lm, enabled)

    def get_input_embeddings(self) -> nn.Module:
        return self.lm.get_input_embeddings()

    # ------------------------------------------------------------------------------------------- training
    def prefix(self, av_tokens: torch.Tensor) -> torch.Tensor:
        """``[projected AV ; prompt]`` embeddings (B, V + P, hidden)."""
        prompt = torch.tensor(self.config.prompt_ids, dtype=torch.long, device=av_tokens.device)
        prompt = self.get_input_embeddings()(prompt).unsqueeze(0).expand(av_tokens.shape[0], -1, -1)
        av = self.projector(av_tokens)
        return torch.cat([av, prompt.to(av.dtype)], dim=1)

    is_prefix_lm = True  # the model computes its training loss through forward() (AVLFormer.forward)

    def forward(self, av_tokens: torch.Tensor, input_ids: torch.Tensor, text_len: torch.Tensor) -> dict:
        """Next-token loss on the caption tokens (``input_ids`` (B, L): caption then end-of-text, right-padded to
        ``text_len``) given the prefix; the logits are computed for the caption positions only. The training
        loss goes through forward() so that FSDP2 gathers the decoder's parameters for it."""
        prefix = self.prefix(av_tokens)
        batch, length = input_ids.shape
        embeds = torch.cat([prefix, self.get_input_embeddings()(input_ids).to(prefix.dtype)], dim=1)
        valid = torch.arange(length, device=input_ids.device)[None, :] < text_len[:, None]
        attention_mask = torch.cat([valid.new_ones(batch, prefix.shape[1]), valid], dim=1).long()
        # Position V+P-1 (the prompt's last) predicts caption token 0, ..., V+P+L-2 predicts token L-1.
        logits = self.lm(inputs_embeds=embeds, attention_mask=attention_mask, logits_to_keep=length + 1).logits
        logits, targets = logits[:, :-1][valid], input_ids[valid]
        loss = F.cross_entropy(logits.float(), targets) if targets.numel() else logits.sum() * 0.0
        with torch.no_grad():
            accuracy = (logits.argmax(-1) == targets).float().mean() if targets.numel() else loss.new_zeros(())
        return {"loss": loss, "accuracy": accuracy}

    # ------------------------------------------------------------------------------------------- decoding
    @property
    def special_ids(self) -> SpecialIds:
        eos = self.config.eos_token_id
        return SpecialIds(start=eos, end=eos, pad=eos)

    def make_stepper(self, av_tokens: torch.Tensor, av_mask, *, max_length: int, expand: int, use_cache: bool):
        return PrefixLMStepper(self, av_tokens, expand, use_cache)

    def caption_logprobs(self, av_tokens: torch.Tensor, av_mask, samples, num_samples: int):
        """Self-critical training's scores (modeling/sampling.py): log p of each sampled caption's drawn tokens,
        with gradients, from one forward of the LM (its own modules, so LoRA adapters take the gradient) over
        ``[prefix ; t0 … t_{T-2}]``; rows video-major (row = b·K + k), the prefix computed once per video."""
        token_ids = samples.token_ids
        steps = token_ids.shape[1]
        prefix = self.prefix(av_tokens).repeat_interleave(num_samples, dim=0)
        text = self.get_input_embeddings()(token_ids[:, :steps - 1]).to(prefix.dtype)
        # The prefix's last position predicts t0, ..., the one holding t_{T-2} predicts t_{T-1}: causal
        # attention keeps what follows a caption's end out of its drawn positions, so no padding mask is needed.
        logits = self.lm(inputs_embeds=torch.cat([prefix, text], dim=1), logits_to_keep=steps).logits
        return drawn_token_scores(logits[samples.drawn], samples)

    # ------------------------------------------------------------------------------------------- LoRA
    def adapter_state(self) -> dict[str, torch.Tensor]:
        """What an adapter file holds, by this module's names: the LoRA adapters and the projector."""
        return {name: tensor for name, tensor in self.state_dict().items()
                if "lora_" in name or name.startswith("projector.")}

    def save_adapter(self, folder: str | Path) -> Path:
        """``adapter_model.safetensors`` (the adapters and the projector) naming the base weights by hash."""
        if self.config.training != "lora":
            raise ValueError("save_adapter: this decoder has no LoRA adapters (training is "
                             f"{self.config.training!r})")
        with atomic_folder(folder) as staging:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.adapter_state().items()},
                      str(staging / ADAPTER_WEIGHTS),
                      metadata={"base_weights_sha256": self.config.weights_sha256, "base_model": self.config.path,
                                "part_config": json.dumps(self.config.to_dict())})
        return Path(folder)

    def load_adapter(self, folder: str | Path) -> None:
        """Load adapters saved by :meth:`save_adapter` onto this base; another base's are refused."""
        path = Path(folder) / ADAPTER_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no LoRA adapter file")
        with safe_open(str(path), framework="pt") as handle:
            saved_hash = (handle.metadata() or {}).get("base_weights_sha256", "")
            state = {name: handle.get_tensor(name) for name in handle.keys()}
        if saved_hash != self.config.weights_sha256:
            raise ValueError(f"{path}: the adapter was trained on base weights {saved_hash[:12] or '(unknown)'}, "
                             f"this model's base is {self.config.weights_sha256[:12] or '(unknown)'}; load it onto "
                             f"the base it names")
        expected = {name: tuple(tensor.shape) for name, tensor in self.adapter_state().items()}
        check_state_dict(state, expected, what=f"{path}: adapter")
        self.load_state_dict(state, strict=False)

    def unload_lora(self) -> None:
        """Fold the adapters in and put the plain layers back: the decoder becomes a ``full`` one whose state
        dict is the LM's own names (what ``avlformer merge-lora`` writes)."""
        from peft.tuners.lora import LoraLayer

        for name, module in list(self.lm.named_modules()):
            if isinstance(module, LoraLayer):
                module.merge()
                parent_name, _, child = name.rpartition(".")
                setattr(self.lm.get_submodule(parent_name) if parent_name else self.lm, child,
                        module.get_base_layer())
        self.config.training = "full"
        self.apply_training_mode()


def _inject_lora(lm: nn.Module, config: HFCausalLMConfig) -> nn.Module:
    from peft import LoraConfig, inject_adapter_in_model

    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.lora_target_modules) or None, bias="none",
                      fan_in_fan_out=config.hf_config["model_type"] == "gpt2")  # GPT-2's Conv1D stores W^T
    try:
        return inject_adapter_in_model(lora, lm)
    except ValueError as error:
        raise ValueError(f"LoRA: {str(error).splitlines()[0]} (set text.lora_target_modules)") from None


def load_pretrained_lm(module: HFCausalLMDecoder, path: str) -> list[str]:
    """The LM's weights from its folder (safetensors only) into ``module.lm``; returns the names left as built
    (the adapters, which start as LoRA's initialisation)."""
    from transformers import AutoModelForCausalLM

    folder = check_model_folder(path, "causal LM")
    base = read_folder_state(folder, AutoModelForCausalLM, module.config.trust_remote_code)
    sources = {name: name.replace(".base_layer.", ".") for name in module.lm.state_dict()}
    mapped = {name: base[source] for name, source in sources.items() if source in base}
    left = [name for name in sources if name not in mapped]
    if any("lora_" not in name for name in left):
        raise ValueError(f"{folder}: weights do not fit the decoder (no {[n for n in left if 'lora_' not in n][:3]})")
    module.lm.load_state_dict(mapped, strict=False)
    return left


class PrefixLMStepper:
    """Next-token logits for the search loops of modeling/generation.py. Column 0 of ``token_ids`` is the start
    placeholder (the prefix stands for it). With the cache, the prefix runs once per video and each step feeds
    the one new token with ``past_key_values``; without, the whole sequence runs every step (the reference)."""

    def __init__(self, decoder: HFCausalLMDecoder, av_tokens: torch.Tensor, expand: int, use_cache: bool):
        self.decoder, self.use_cache = decoder, use_cache
        self.prefix = decoder.prefix(av_tokens).repeat_interleave(expand, dim=0)
        self.cache = None

    def _run(self, embeds: torch.Tensor, cache=None):
        lm = self.decoder.lm
        # transformers 5 names the cache argument ``cache``; 4.x (and older 5.x) ``past_key_values``.
        name = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"
        out = lm(inputs_embeds=embeds, use_cache=self.use_cache, logits_to_keep=1, **{name: cache})
        if self.use_cache:
            self.cache = out.cache if name == "cache" else out.past_key_values
        return out

    def next_logits(self, token_ids: torch.Tensor) -> torch.Tensor:
        embed = self.decoder.get_input_embeddings()
        if not self.use_cache:
            text = embed(token_ids[:, 1:]).to(self.prefix.dtype)
            return self._run(torch.cat([self.prefix, text], dim=1)).logits[:, -1]
        if self.cache is None:  # the first step: the prefix, whose last position predicts the first token
            return self._run(self.prefix).logits[:, -1]
        return self._run(embed(token_ids[:, -1:]).to(self.prefix.dtype), self.cache).logits[:, -1]

    def reorder(self, beam_idx: torch.Tensor) -> None:
        if self.cache is not None:
            self.cache.reorder_cache(beam_idx)
