"""The one table between the original's flag names and the training configuration tree (``training.config``).

Each flag / ``--config`` key / ``args.json`` key keeps the original's spelling; ``path`` is the ``TrainConfig``
field it sets. Flags without a path are translated by ``training.args``; ``ignored`` flags (no effect here) are
accepted at their neutral values only, and any other value is an error giving the reason.
"""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from avlformer.flags import parse_bool, parse_float, parse_int, parse_text


class ArgumentError(ValueError):
    """A flag or config value that cannot be honoured; the message names the flag (and file) and the problem."""


@contextlib.contextmanager
def as_argument_error(*kinds: type[Exception]) -> Iterator[None]:
    """Re-raise ``kinds`` (default: a missing file or a bad value), whose messages name the file, as ArgumentError."""
    try:
        yield
    except kinds or (FileNotFoundError, ValueError) as err:
        raise ArgumentError(str(err)) from None


def converter_of(value: Any) -> Callable:
    """The command line's conversion for values of ``value``'s type (text for anything but bool, int, float)."""
    return {bool: parse_bool, int: parse_int, float: parse_float}.get(type(value), parse_text)


ANY = "any value"  # ``accepted`` of an ignored flag whose every value is accepted (and recorded as the original did)


@dataclass(frozen=True)
class Flag:
    name: str                      # the original's spelling: the key in config files and args.json
    path: str | None               # the TrainConfig field it sets; None: translated by training.args
    help: str
    type: Callable | None = None   # only for flags without a path (the others take their field's type)
    choices: tuple | None = None
    nargs: str | None = None
    unset: Any = None              # a value meaning "keep the configuration's own" (the original's -1 overrides)
    accepted: tuple | str | None = None  # ignored flags: the values accepted (the first is recorded), or ANY
    relative: bool = False         # in a config file, a relative value is taken from the file's folder

    @property
    def option(self) -> str:
        return flag_option(self.name)


def flag_option(name: str) -> str:
    """Command-line spelling: hyphens; a trailing underscore (``lambda_``) is dropped, as the CLI normaliser does."""
    return "--" + name.replace("_", "-").rstrip("-")


def ignored(why: str, **neutral) -> tuple[Flag, ...]:
    """The original's flags that do nothing here, each accepted at its neutral value only (or at one of a tuple
    of them, the first named in the error); a flag takes the type of its value."""
    flags = []
    for name, values in neutral.items():
        values = values if isinstance(values, tuple) else (values,)
        flags.append(Flag(name, None, why, converter_of(values[0]), nargs="+" if isinstance(values[0], list) else None,
                          accepted=values))
    return tuple(flags)


NO_DEEPSPEED = ("DeepSpeed is not supported; use --distributed-strategy fsdp, which shards parameters, gradients "
                "and optimizer state natively")
B, I, S = parse_bool, parse_int, parse_text

# Grouped as in the original's parser; ours are marked "(ours)".
FLAGS: tuple[Flag, ...] = (
    # where the model and its first weights come from
    Flag("model_preset", "init.model_preset", "(ours) base model configuration", choices=("paper", "tiny")),
    Flag("model_config", "init.model_config", "(ours) AVLFormerConfig JSON file; replaces --model_preset (and its defaults below)",
         relative=True),
    Flag("model_name_or_path", "init.model_name_or_path", "local Hugging Face BERT folder: its weights (config.json "
         "+ model.safetensors or pytorch_model.bin) initialise the text transformer, its vocab.txt is the "
         "tokenizer", relative=True),
    Flag("tokenizer_name", "init.tokenizer_name", "folder with vocab.txt; overrides --model_name_or_path for the "
         "tokenizer", relative=True),
    Flag("swin_checkpoint", "init.swin_checkpoint", "(ours) official Video Swin Kinetics .pth to initialise the video "
         "encoder (upstream hard-coded models/video_swin_transformer/swin_base_patch244_window877_kinetics600_22k.pth)",
         relative=True),
    Flag("passt_checkpoint", "init.passt_checkpoint", "(ours) official PaSST .pt to initialise the audio encoder "
         "(upstream hard-coded src/modeling/passt/passt-s-f128-p16-s10-ap.476-swa.pt)", relative=True),
    Flag("pretrained_checkpoint", "init.pretrained_checkpoint", "initialise all weights from a checkpoint (ours, "
         "upstream folder or model.bin)", relative=True),
    Flag("video_encoder", "init.video_encoder", "(ours) the video encoder: a registered part (video_swin, ...) or "
         "hf:FOLDER, a Hugging Face video model (VideoMAE, TimeSformer, ViViT) or image model applied per frame "
         "(CLIP, SigLIP, DINOv2); docs/models.md"),
    Flag("audio_encoder", "init.audio_encoder", "(ours) the audio encoder: a registered part (passt) or hf:FOLDER "
         "(AST, Whisper)"),
    Flag("decoder", "init.decoder", "(ours) the decoder: a registered part (bert) or hf:FOLDER, a causal LM "
         "(Llama, Qwen2, SmolLM2, GPT-2) fed the AV tokens as a prefix"),
    Flag("trust_remote_code", "init.trust_remote_code", "(ours) let code in a Hugging Face folder run (off: it never "
         "does)"),
    Flag("decoder_training", "init.decoder_training", "(ours) an hf: decoder's weights: lora (adapters only), full "
         "or frozen (only the projector trains)", choices=("lora", "full", "frozen")),
    Flag("decoder_projector", "init.decoder_projector", "(ours) AV tokens into an hf: decoder's embedding space",
         choices=("linear", "mlp")),
    Flag("decoder_prompt", "init.decoder_prompt", "(ours) the text between the AV tokens and the caption"),
    Flag("decoder_lr_multiplier", "init.decoder_lr_multiplier", "(ours) an hf: decoder's learning-rate multiplier"),
    Flag("lora_rank", "init.lora_rank", "(ours) LoRA rank"),
    Flag("lora_alpha", "init.lora_alpha", "(ours) LoRA alpha"),
    Flag("lora_dropout", "init.lora_dropout", "(ours) LoRA dropout"),
    Flag("lora_target_modules", "init.lora_target_modules", "(ours) module names LoRA adapts (default: peft's "
         "choice for the architecture)", nargs="*"),
    # data
    Flag("data_dir", "data.data_dir", "root that relative yaml paths are joined to", relative=True),
    Flag("train_yaml", "data.train_yaml", "training metadata yaml (relative to --data_dir)"),
    Flag("val_yaml", "data.val_yaml", "validation metadata yaml (relative to --data_dir)"),
    Flag("features", "data.features", "(ours) folder of `avlformer extract-features`: train the layers above the "
         "frozen encoders on their cached outputs (docs/training.md, Fast experiments on cached features)",
         relative=True),
    Flag("mask_prob", "data.mask_prob", "fraction of caption tokens chosen for MLM"),
    Flag("max_masked_tokens", "data.max_masked_tokens", "cap on MLM positions per caption"),
    Flag("limited_samples", "data.limited_samples", "train on the first N training samples only (-1: all)"),
    Flag("num_workers", "data.num_workers", "DataLoader worker processes per rank"),
    # model
    Flag("max_num_frames", "model.num_frames", "frames per clip"),
    Flag("img_res", "model.image_size", "frame side in pixels"),
    Flag("img_feature_dim", "model.img_feature_dim", "width of the visual tokens fed to the text transformer"),
    Flag("max_seq_length", "model.max_seq_length", "text positions in a training example"),
    Flag("num_hidden_layers", "model.text.num_layers", "text transformer layers (-1: keep)", unset=-1),
    Flag("hidden_size", "model.text.hidden_size", "text transformer width (-1: keep)", unset=-1),
    Flag("num_attention_heads", "model.text.num_heads", "text transformer heads (-1: keep)", unset=-1),
    Flag("intermediate_size", "model.text.intermediate_size", "text transformer MLP width (-1: keep)", unset=-1),
    Flag("drop_out", "model.text.hidden_dropout", "text transformer hidden dropout"),
    Flag("learn_mask_enabled", "model.learn_mask_enabled", "learned sparse visual attention mask"),
    Flag("sparse_mask_soft2hard", "model.sparse_mask_soft2hard", "binarise the learned mask at 0.5 (no gradient)"),
    Flag("loss_sparse_w", "model.sparsity_loss_weight", "weight of the mask sparsity loss"),
    Flag("lambda_", "model.lm_loss_weight", "loss = lambda_*LM + (1-lambda_)*MLM (--lambda_ or --lambda)"),
    Flag("max_gen_length", "model.max_gen_length", "caption length limit when decoding for validation"),
    Flag("num_beams", "model.num_beams", "beams when decoding for validation (1 = greedy)"),
    Flag("length_penalty", "model.length_penalty", "beam-search length penalty"),
    Flag("activation_checkpointing", "run.activation_checkpointing", "(ours) encoders to checkpoint: video audio "
         "text", nargs="*", choices=("video", "audio", "text")),
    # optimisation
    Flag("per_gpu_train_batch_size", "optim.per_gpu_train_batch_size", "training batch per process"),
    Flag("per_gpu_eval_batch_size", "optim.per_gpu_eval_batch_size", "validation batch per process (at least the "
         "training batch, as upstream)"),
    Flag("effective_batch_size", "optim.effective_batch_size", "if > 0: global batch per optimizer step; sets the "
         "per-process batch"),
    Flag("gradient_accumulation_steps", "optim.gradient_accumulation_steps", "micro-batches per optimizer step"),
    Flag("learning_rate", "optim.learning_rate", "peak learning rate (non-backbone groups)"),
    Flag("backbone_coef_lr", "optim.backbone_coef_lr", "Video Swin lr = learning_rate * this (0 freezes it)"),
    Flag("weight_decay", "optim.weight_decay", "AdamW decoupled weight decay (applied; upstream hard-coded 0.2)"),
    Flag("adam_epsilon", "optim.adam_epsilon", "AdamW epsilon"),
    Flag("max_grad_norm", "optim.max_grad_norm", "global gradient-norm clip (<= 0 disables)"),
    Flag("warmup_ratio", "optim.warmup_ratio", "fraction of optimizer steps spent warming up"),
    Flag("min_lr", "optim.min_lr", "(ours) floor of the warmup-linear schedule (upstream hard-coded 1e-8)"),
    Flag("scheduler", "optim.scheduler", "lr schedule", choices=("warmup_linear", "step")),
    Flag("num_train_epochs", "optim.num_train_epochs", "epochs"),
    Flag("max_steps", "optim.max_steps", "(ours, Hugging Face's name) if > 0: optimizer steps in all, in place of "
         "--num_train_epochs (the schedule spans them; the last epoch may end early)"),
    Flag("freeze_backbone", "optim.freeze_backbone", "freeze Video Swin"),
    Flag("freeze_passt", "optim.freeze_passt", "freeze PaSST"),
    Flag("freeze_embedding", "optim.freeze_embedding", "freeze the text word embeddings"),
    # running
    Flag("output_dir", "run.output_dir", "where checkpoints and log/ go (spaces become '_', as upstream)",
         relative=True),
    Flag("seed", "run.seed", "seed of python, numpy and torch RNGs and of the data order"),
    Flag("deterministic", "run.deterministic", "(ours) reproducible to the bit: deterministic kernels, and one CPU "
         "thread per process on CPU (slower; see docs/training.md, Resuming)"),
    Flag("logging_steps", "run.logging_steps", "log every N optimizer steps"),
    Flag("save_steps", "run.save_steps", "checkpoint (and validate) every N optimizer steps; <= 0: once per epoch"),
    Flag("evaluate_during_training", "run.evaluate_during_training", "validate (greedy decode + caption metrics) at "
         "each checkpoint"),
    Flag("resume", "run.resume", "(ours) 'auto' (or a bare --resume) = newest intact checkpoint in --output_dir, or "
         "a checkpoint folder", nargs="?", relative=True),
    Flag("overwrite_output_dir", "run.overwrite_output_dir", "(ours, Hugging Face's name) start afresh in an "
         "--output_dir that holds an earlier run: its checkpoints, best checkpoint and logs are deleted (without "
         "this or --resume, such a folder is an error)"),
    Flag("precision", "run.precision", "(ours) native AMP precision", choices=("fp32", "bf16", "fp16")),
    Flag("distributed_strategy", "run.distributed_strategy", "(ours) how processes share the model",
         choices=("ddp", "fsdp", "deepspeed")),
    Flag("device", "run.device", "auto (CUDA when available, one GPU per process), cpu, cuda or cuda:N"),
    Flag("local_rank", "run.local_rank", "legacy torch.distributed.launch argument; LOCAL_RANK from the environment "
         "wins"),
    # self-critical training (ours: upstream had these flags without a training loop behind them)
    Flag("scst", "scst.enabled", "self-critical sequence training: optimise CIDEr-D of sampled captions, usually "
         "from a cross-entropy checkpoint (--pretrained-checkpoint); docs/training.md, Self-critical training"),
    Flag("sc_train_sample_n", "scst.sample_n", "--scst: captions sampled per video"),
    Flag("sc_baseline_type", "scst.baseline_type", "--scst: reward baseline, the mean of the video's other samples "
         "or the greedy caption's (Rennie et al.)", choices=("sample", "greedy")),
    Flag("temperature", "scst.temperature", "--scst: sampling temperature (validation always decodes "
         "deterministically)"),
    Flag("top_k", "scst.top_k", "--scst: sample among the k most likely tokens (0: all)"),
    Flag("top_p", "scst.top_p", "--scst: sample within the smallest set of tokens of probability >= p (1: all)"),
    Flag("scst_xe_weight", "scst.xe_weight", "--scst: weight of the cross-entropy loss on the batch's references "
         "added to the self-critical loss (0: self-critical alone)"),
    # the original's spellings of settings above, translated by training.args
    Flag("max_seq_a_length", None, "caption positions; must equal --max_seq_length (no second text segment)", I),
    Flag("max_img_seq_length", None, "visual tokens: derived from frames, resolution and PaSST; a given value is "
         "checked", I),
    Flag("attn_mask_type", None, "learn_vid_att = learned AV mask, seq2seq = plain; follows --learn_mask_enabled, "
         "a contradicting value is an error", S, choices=("seq2seq", "learn_vid_att")),
    Flag("use_checkpoint", None, "activation checkpointing of the video encoder (= --activation-checkpointing "
         "video)", B),
    Flag("mixed_precision_method", None, "apex = --distributed-strategy ddp, fairscale = fsdp", S,
         choices=("apex", "deepspeed", "fairscale")),
    Flag("amp_opt_level", None, "apex level: 0 = fp32, 1/2/3 = --precision fp16", I),
    Flag("fairscale_fp16", None, "--precision fp16 with --mixed_precision_method fairscale", B),
    Flag("debug", None, "upstream debug run: batch 1, 1 epoch, log every 5 steps", B),
    # the original's flags that do nothing here
    Flag("zero_opt_stage", None, "DeepSpeed ZeRO stage; recorded as -1, as upstream did without DeepSpeed", I,
         accepted=ANY),
    *ignored("`avlformer train` always trains; use `avlformer infer` to decode", do_train=True),
    *ignored("captions are lower-cased: the bert-base-uncased vocab is lower-case", do_lower_case=True),
    *ignored("captions are always held in memory", on_memory=True),
    *ignored(NO_DEEPSPEED, deepspeed_fp16=False),
    *ignored("the model configuration comes from --model_preset/--model_config", config_name=""),
    *ignored("use --pretrained_checkpoint", load_partial_weights=False),
    *ignored("object-detection tags are not part of FAVD", add_od_labels=False, unique_labels_on=False,
             no_sort_by_conf=False, od_label_conf=0.0),
    *ignored("ASR text is not part of FAVD", use_asr=False),
    *ignored("only random MLM masking exists (upstream's other modes were never wired)", text_mask_type="random"),
    *ignored("POS-tag masking is not implemented", tag_to_mask=["noun", "verb"], mask_tag_prob=(0.8, -1.0),
             tagger_model_path="models/flair/en-pos-ontonotes-fast-v0.5.pt"),
    *ignored("upstream never used it", random_mask_prob=0.0, mask_img_feat=False, max_masked_img_tokens=10),
    *ignored("the LM head is untied in the released model", tie_weights=False),
    *ignored("label smoothing is not implemented", label_smoothing=0.0),
    *ignored("drop-worst loss is not implemented", drop_worst_ratio=0.0, drop_worst_after=0),
    *ignored("not used by training", output_hidden_states=False),
    *ignored("validation keeps one caption per video", num_return_sequences=1, num_keep_best=1),
    *ignored("repetition penalty is not implemented", repetition_penalty=1.0),
    *ignored("constrained beam search did not exist upstream (module missing)", use_cbs=False, use_hypo=False,
             decoding_constraint=False, remove_bad_endings=False, min_constraints_to_satisfy=2),
    *ignored("--scst takes CIDEr-D document frequencies from the captions of --train_yaml",
             cider_cached_tokens="coco_caption/gt/coco-train-words.p"),
    *ignored("the token stride is fixed by Video Swin's patch (2,4,4) and 3 merges = 32 pixels", patch_size=32),
    *ignored("visual tokens are always the feature grid", grid_feat=True),
    *ignored("the Kinetics variant is the file given to --swin-checkpoint", kinetics=("400", "600")),
    *ignored("2D-ImageNet Swin initialisation is not supported", pretrained_2d=False),
    *ignored("the backbone size comes from --model_preset/--model_config", vidswin_size="base"),
    *ignored("only the default text/visual attention layout is implemented", att_mode="default"),
    *ignored("pass --swin-checkpoint (it is applied before --pretrained-checkpoint)", reload_pretrained_swin=False),
    *ignored("only the full weight transfer (0) is implemented", transfer_method=(0, -1)),
    *ignored("learned masks must have the target shape; expansion is not implemented", att_mask_expansion=(0, -1)),
    *ignored("upstream's restore.pt mechanism is replaced by --resume", restore_ratio=(-1.0, 0.05)),
    *ignored("use benchmarks/ for speed measurements", debug_speed=False),
    *ignored("use `avlformer infer` + `avlformer evaluate` on the test split", do_test=False,
             test_yaml=["coco_caption/test.yaml"]),
    *ignored("use `avlformer infer` + `avlformer evaluate`", do_eval=False),
    *ignored("use `avlformer infer --eval_model_dir`", eval_model_dir=""),
    *ignored("use --resume (training) or `avlformer infer --eval_model_dir`", resume_checkpoint="None"),
    *ignored("use `avlformer infer --test_video_fname`", test_video_fname="None"),
    *ignored("use `avlformer infer --test_audio_fname`", test_audio_fname="None"),
    *ignored("upstream's config key was never read", use_clip_model=(True, False)),
)

BY_NAME: dict[str, Flag] = {flag.name: flag for flag in FLAGS}
COMPAT = tuple(flag for flag in FLAGS if flag.accepted is not None)


def config_key(key: str) -> str:
    """Config files may use either spelling; ``lambda`` and ``lambda_`` are the same key."""
    key = key.replace("-", "_")
    return "lambda_" if key in ("lambda", "lambda_") else key


def convert(flag: Flag, converter: Callable, value: Any) -> Any:
    """A value from a config file, converted by the command line's rule (argparse errors as ``ArgumentTypeError``)."""
    values = value if isinstance(value, list) else [value]
    converted = [converter(item) for item in values] if flag.nargs in ("+", "*") else [converter(value)]
    for item in converted:
        if flag.choices and item not in flag.choices:
            raise argparse.ArgumentTypeError(f"{item!r} is not one of {', '.join(flag.choices)}")
    return converted if flag.nargs in ("+", "*") else converted[0]


def upstream_values(config) -> dict[str, Any]:
    """A resolved ``TrainConfig`` under the original's names (``log/args.json``, the model card): every setting,
    and the values the original derived (visual tokens, mask type), as it recorded them."""
    values = {}
    for flag in FLAGS:
        if flag.path:
            try:
                values[flag.name] = config.get(flag.path)
            except AttributeError:  # a field of the paper's parts that the chosen part has not (BERT's num_layers)
                continue
    values.update(derived_values(config.model), use_checkpoint="video" in config.run.activation_checkpointing,
                  zero_opt_stage=-1, do_train=True)
    return values


def derived_values(model) -> dict[str, Any]:
    """The original's flags that follow from the model here (given ones must agree with it)."""
    return {"max_seq_a_length": model.max_seq_length, "max_img_seq_length": model.num_av_tokens,
            "attn_mask_type": "learn_vid_att" if model.learn_mask_enabled else "seq2seq"}
