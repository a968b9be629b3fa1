"""The training configuration: one typed tree, every default in exactly one place (docs/training.md, Flags and
config files). Flag names map onto it through ``training.flag_table``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from avlformer.data.dataset import DataConfig
from avlformer.modeling.avlformer import AVLFormerConfig
from avlformer.modeling.hf_causal_lm import HFCausalLMConfig

PRESETS = {"paper": AVLFormerConfig.paper, "tiny": AVLFormerConfig.tiny}
_LOADER = DataConfig()  # MLM masking defaults are the loader's


@dataclass
class InitSettings:
    """Where the model configuration and its first weights come from, applied in this order."""
    model_preset: str = "paper"
    model_config: str = ""           # an AVLFormerConfig JSON file; replaces the preset
    model_name_or_path: str = ""     # a Hugging Face BERT folder: text weights and vocab
    tokenizer_name: str = ""         # a folder with vocab.txt, ahead of model_name_or_path
    swin_checkpoint: str = ""
    passt_checkpoint: str = ""
    pretrained_checkpoint: str = ""  # every tensor that fits, last
    # The parts (docs/models.md): a registered name or hf:FOLDER; empty keeps the configuration's.
    video_encoder: str = ""
    audio_encoder: str = ""
    decoder: str = ""
    trust_remote_code: bool = False  # let a Hugging Face folder's own code run (off: it never does)
    # A Hugging Face decoder's training: its HFCausalLMConfig fields, with that config's defaults.
    decoder_training: str = HFCausalLMConfig.training
    decoder_projector: str = HFCausalLMConfig.projector
    decoder_prompt: str = HFCausalLMConfig.prompt
    decoder_lr_multiplier: float = HFCausalLMConfig.lr_multiplier
    lora_rank: int = HFCausalLMConfig.lora_rank
    lora_alpha: float = HFCausalLMConfig.lora_alpha
    lora_dropout: float = HFCausalLMConfig.lora_dropout
    lora_target_modules: list[str] = field(default_factory=list)


@dataclass
class DataSettings:
    data_dir: str = "datasets"
    train_yaml: str = "metadata/train_32frames.yaml"
    val_yaml: str = "metadata/val_32frames.yaml"
    features: str = ""               # cached encoder outputs (`avlformer extract-features`) instead of media
    mask_prob: float = _LOADER.mask_prob
    max_masked_tokens: int = _LOADER.max_masked_tokens
    limited_samples: int = -1
    num_workers: int = 4


@dataclass
class OptimSettings:
    per_gpu_train_batch_size: int = 64
    per_gpu_eval_batch_size: int = 64
    effective_batch_size: int = -1   # resolved: per-process batch x processes x accumulation steps
    gradient_accumulation_steps: int = 1
    learning_rate: float = 3e-5
    backbone_coef_lr: float = 0.001
    weight_decay: float = 0.05
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    warmup_ratio: float = 0.1
    min_lr: float = 1e-8
    scheduler: str = "warmup_linear"
    num_train_epochs: int = 20
    max_steps: int = 0               # > 0: the schedule's length in optimizer steps, in place of the epochs'
    freeze_backbone: bool = False
    freeze_passt: bool = False
    freeze_embedding: bool = False


@dataclass
class ScstSettings:
    """Self-critical sequence training (``--scst``); the rest acts only when ``enabled``."""
    enabled: bool = False
    sample_n: int = 5
    baseline_type: str = "sample"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    xe_weight: float = 0.0


@dataclass
class RunSettings:
    output_dir: str = "output/"
    seed: int = 88
    deterministic: bool = False
    logging_steps: int = 20
    save_steps: int = 2000
    evaluate_during_training: bool = False
    resume: str = ""
    overwrite_output_dir: bool = False
    precision: str = "fp32"
    distributed_strategy: str = "ddp"
    device: str = "auto"
    local_rank: int = 0
    activation_checkpointing: list[str] = field(default_factory=list)


SECTIONS = {"init": InitSettings, "data": DataSettings, "optim": OptimSettings, "scst": ScstSettings,
            "run": RunSettings}


@dataclass
class TrainConfig:
    model: AVLFormerConfig = field(default_factory=AVLFormerConfig.paper)
    init: InitSettings = field(default_factory=InitSettings)
    data: DataSettings = field(default_factory=DataSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    scst: ScstSettings = field(default_factory=ScstSettings)
    run: RunSettings = field(default_factory=RunSettings)

    def get(self, path: str) -> Any:
        """The value at a dotted path (``optim.learning_rate``, ``model.text.hidden_dropout``)."""
        value: Any = self
        for part in path.split("."):
            value = getattr(value, part)
        return value
