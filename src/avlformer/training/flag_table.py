"""Every `avlformer train` flag, once: name, type, default, help, and for upstream flags that only exist for
compatibility the values that are accepted (docs/upstream.md §4.5 lists the original's parser).

A flag's name is the upstream (underscore) spelling; it is also the attribute of the resolved training config, the
key in a ``--config`` file and in ``log/args.json``. Upstream flags that did nothing (or belonged to code that
never existed, like CBS) carry ``accepted``: their neutral value(s); any other value is an error naming the
flag and ``help`` (the reason), so no option is silently ignored.

Values are converted strictly, the same way for the command line and for config files: a JSON ``2.5`` or ``true``
for an integer flag is an error, never a silent ``2`` or ``1``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable

from avlformer.flags import parse_bool, parse_float, parse_int


class ArgumentError(ValueError):
    """A flag or config value that cannot be honoured; the message names the flag (and file) and the problem."""


def to_str(value: Any) -> str:
    if not isinstance(value, str):
        raise argparse.ArgumentTypeError(f"expected a string, got {value!r}")
    return value


B, I, F, S = parse_bool, parse_int, parse_float, to_str


@dataclass(frozen=True)
class Flag:
    name: str
    type: Callable
    default: Any          # None: derived from other settings unless given (help says how)
    help: str             # for a compatibility flag: why another value cannot be honoured
    nargs: str | None = None
    choices: tuple | None = None
    accepted: tuple | None = None   # compatibility flag: the only values accepted (``default`` is the first)
    path: bool = False    # relative values in a config file are taken from the config file's folder
    compat: bool = False  # an upstream flag kept only so upstream command lines and configs still parse

    @property
    def option(self) -> str:
        return flag_option(self.name)


def flag_option(name: str) -> str:
    """Command-line spelling: hyphens; a trailing underscore (``lambda_``) is dropped, as the CLI normaliser does."""
    return "--" + name.replace("_", "-").rstrip("-")


def compat(name: str, accepted: tuple, why: str, flag_type: Callable | None = None, nargs: str | None = None) -> Flag:
    flag_type = flag_type or (B if isinstance(accepted[0], bool) else S)
    return Flag(name, flag_type, accepted[0], why, "?" if flag_type is B else nargs, accepted=accepted,
                compat=True)


NO_OD = "object-detection tags are not part of FAVD"
NO_POS = "POS-tag masking is not implemented"
NEVER_USED = "upstream never used it"
ONE_CAPTION = "validation keeps one caption per video"
NO_CBS = "constrained beam search did not exist upstream (module missing)"
NO_DROP_WORST = "drop-worst loss is not implemented"
NO_DEEPSPEED = ("DeepSpeed is not supported; use --distributed-strategy fsdp, which shards parameters, gradients "
                "and optimizer state natively")

# Grouped as in upstream's parser; ours are marked "(ours)".
FLAGS: tuple[Flag, ...] = (
    # data
    Flag("data_dir", S, "datasets", "root that relative yaml paths are joined to", path=True),
    Flag("train_yaml", S, "metadata/train_32frames.yaml", "training metadata yaml (relative to --data_dir)"),
    Flag("val_yaml", S, "metadata/val_32frames.yaml", "validation metadata yaml (relative to --data_dir)"),
    Flag("output_dir", S, "output/", "where checkpoints and log/ go (spaces become '_', as upstream)", path=True),
    Flag("model_name_or_path", S, "", "local Hugging Face BERT folder: its weights (config.json + model.safetensors "
         "or pytorch_model.bin) initialise the text transformer, its vocab.txt is the tokenizer", path=True),
    Flag("tokenizer_name", S, "", "folder with vocab.txt; overrides --model_name_or_path for the tokenizer",
         path=True),
    Flag("do_lower_case", B, True, "captions are lower-cased: the bert-base-uncased vocab is lower-case", "?",
         accepted=(True,)),
    Flag("on_memory", B, True, "captions are always held in memory", "?", accepted=(True,)),
    Flag("max_seq_length", I, 300, "text positions in a training example"),
    Flag("max_seq_a_length", I, 300, "caption positions; must equal --max_seq_length (no OD labels)"),
    Flag("max_img_seq_length", I, None, "visual tokens: derived from frames, resolution and PaSST; a given value "
         "is checked"),
    Flag("mask_prob", F, 0.25, "fraction of caption tokens chosen for MLM"),
    Flag("max_masked_tokens", I, 75, "cap on MLM positions per caption"),
    Flag("limited_samples", I, -1, "train on the first N training samples only (-1: all)"),
    Flag("num_workers", I, 4, "DataLoader worker processes per rank"),
    Flag("features", S, "", "(ours) folder of `avlformer extract-features`: train the layers above the frozen "
         "encoders on their cached outputs (docs/training.md, Fast experiments on cached features)", path=True),
    # model
    Flag("model_preset", S, "paper", "(ours) base model configuration before flags apply", choices=("paper", "tiny")),
    Flag("model_config", S, "", "(ours) AVLFormerConfig JSON file; replaces --model_preset", path=True),
    Flag("max_num_frames", I, 32, "frames per clip"),
    Flag("img_res", I, 224, "frame side in pixels"),
    Flag("img_feature_dim", I, 512, "width of the visual tokens fed to the text transformer"),
    Flag("num_hidden_layers", I, -1, "text transformer layers (override when > 0)"),
    Flag("hidden_size", I, -1, "text transformer width (override when > 0)"),
    Flag("num_attention_heads", I, -1, "text transformer heads (override when > 0)"),
    Flag("intermediate_size", I, -1, "text transformer MLP width (override when > 0)"),
    Flag("drop_out", F, 0.1, "text transformer hidden dropout"),
    Flag("learn_mask_enabled", B, False, "learned sparse visual attention mask", "?"),
    Flag("sparse_mask_soft2hard", B, False, "binarise the learned mask at 0.5 (no gradient)", "?"),
    Flag("loss_sparse_w", F, 0.0, "weight of the mask sparsity loss"),
    Flag("lambda_", F, 0.5, "loss = lambda_*LM + (1-lambda_)*MLM (upstream meaning; --lambda_ / --lambda)"),
    Flag("attn_mask_type", S, None, "learn_vid_att = learned AV mask, seq2seq = plain (AV tokens attend to all AV "
         "tokens); follows --learn_mask_enabled, a contradicting value is an error",
         choices=("seq2seq", "learn_vid_att")),
    Flag("use_checkpoint", B, False, "activation checkpointing in the video encoder (upstream flag)", "?"),
    Flag("activation_checkpointing", S, [], "(ours) encoders to checkpoint: video audio text", "*",
         choices=("video", "audio", "text")),
    Flag("freeze_backbone", B, False, "freeze Video Swin (forced when --backbone_coef_lr is 0)", "?"),
    Flag("freeze_passt", B, False, "freeze PaSST", "?"),
    Flag("freeze_embedding", B, False, "freeze the text word embeddings", "?"),
    Flag("swin_checkpoint", S, "", "(ours) official Video Swin Kinetics .pth to initialise the video encoder "
         "(upstream hard-coded models/video_swin_transformer/swin_base_patch244_window877_kinetics600_22k.pth)",
         path=True),
    Flag("passt_checkpoint", S, "", "(ours) official PaSST .pt to initialise the audio encoder "
         "(upstream hard-coded src/modeling/passt/passt-s-f128-p16-s10-ap.476-swa.pt)", path=True),
    Flag("pretrained_checkpoint", S, "", "initialise all weights from a checkpoint (ours, upstream folder or "
         "model.bin)", path=True),
    Flag("max_gen_length", I, 20, "caption length limit when decoding for validation"),
    Flag("num_beams", I, 1, "beams when decoding for validation (1 = greedy)"),
    Flag("length_penalty", F, 1.0, "beam-search length penalty"),
    # optimisation
    Flag("per_gpu_train_batch_size", I, 64, "training batch per process"),
    Flag("per_gpu_eval_batch_size", I, 64, "validation batch per process"),
    Flag("effective_batch_size", I, -1, "if > 0: global batch per optimizer step; sets the per-process batch"),
    Flag("gradient_accumulation_steps", I, 1, "micro-batches per optimizer step"),
    Flag("learning_rate", F, 3e-5, "peak learning rate (non-backbone groups)"),
    Flag("backbone_coef_lr", F, 0.001, "Video Swin lr = learning_rate * this"),
    Flag("weight_decay", F, 0.05, "AdamW decoupled weight decay (applied; upstream hard-coded 0.2)"),
    Flag("adam_epsilon", F, 1e-8, "AdamW epsilon"),
    Flag("max_grad_norm", F, 1.0, "global gradient-norm clip (<= 0 disables)"),
    Flag("warmup_ratio", F, 0.1, "fraction of optimizer steps spent warming up"),
    Flag("min_lr", F, 1e-8, "(ours) floor of the warmup-linear schedule (upstream hard-coded 1e-8)"),
    Flag("scheduler", S, "warmup_linear", "lr schedule", choices=("warmup_linear", "step")),
    Flag("num_train_epochs", I, 20, "epochs"),
    Flag("seed", I, 88, "seed of python, numpy and torch RNGs and of the data order"),
    Flag("deterministic", B, False, "(ours) reproducible to the bit: deterministic kernels, and one CPU thread "
         "per process on CPU (slower; see docs/training.md, Resuming)", "?"),
    # running
    Flag("logging_steps", I, 20, "log every N optimizer steps"),
    Flag("save_steps", I, 2000, "checkpoint (and validate) every N optimizer steps; <= 0: once per epoch"),
    Flag("evaluate_during_training", B, False, "validate (greedy decode + caption metrics) at each checkpoint", "?"),
    Flag("resume", S, "", "(ours) 'auto' (or a bare --resume) = newest intact checkpoint in --output_dir, or a "
         "checkpoint folder", "?", path=True),
    Flag("overwrite_output_dir", B, False, "(ours, Hugging Face's name) start afresh in an --output_dir that holds "
         "an earlier run: its checkpoints, best checkpoint and logs are deleted (without this or --resume, such a "
         "folder is an error)", "?"),
    Flag("precision", S, None, "(ours) native AMP precision (default fp32, or fp16 when upstream's fp16 flags ask)",
         choices=("fp32", "bf16", "fp16")),
    Flag("distributed_strategy", S, None, "(ours) how processes share the model (default ddp)",
         choices=("ddp", "fsdp", "deepspeed")),
    Flag("mixed_precision_method", S, None, "upstream spelling of the strategy: apex = ddp, fairscale = fsdp",
         choices=("apex", "deepspeed", "fairscale")),
    Flag("amp_opt_level", I, 0, "upstream apex level: 0 = fp32, 1/2/3 = fp16"),
    Flag("fairscale_fp16", B, False, "fp16 with --mixed_precision_method fairscale", "?"),
    Flag("zero_opt_stage", I, -1, "upstream DeepSpeed ZeRO stage; recorded as -1 (upstream reset it unless "
         "DeepSpeed, and DeepSpeed is not supported)"),
    Flag("device", S, "auto", "auto (CUDA when available, one GPU per process), cpu, cuda or cuda:N"),
    Flag("local_rank", I, 0, "legacy torch.distributed.launch argument; LOCAL_RANK from the environment wins"),
    Flag("debug", B, False, "upstream debug run: batch 1, 1 epoch, log every 5 steps", "?"),
    # self-critical training (ours: upstream had these flags without a training loop behind them)
    Flag("scst", B, False, "self-critical sequence training: optimise CIDEr-D of sampled captions, usually from "
         "a cross-entropy checkpoint (--pretrained-checkpoint); docs/training.md, Self-critical training", "?"),
    Flag("sc_train_sample_n", I, 5, "--scst: captions sampled per video"),
    Flag("sc_baseline_type", S, "sample", "--scst: reward baseline, the mean of the video's other samples or the "
         "greedy caption's (Rennie et al.)", choices=("sample", "greedy")),
    Flag("temperature", F, 1.0, "--scst: sampling temperature (validation always decodes deterministically)"),
    Flag("top_k", I, 0, "--scst: sample among the k most likely tokens (0: all)"),
    Flag("top_p", F, 1.0, "--scst: sample within the smallest set of tokens of probability >= p (1: all)"),
    Flag("do_train", B, True, "`avlformer train` always trains; use `avlformer infer` to decode", "?",
         accepted=(True,)),
    # upstream flags kept for compatibility: only the neutral value is accepted
    compat("deepspeed_fp16", (False,), NO_DEEPSPEED),
    compat("config_name", ("",), "the model configuration comes from --model_preset/--model_config"),
    compat("load_partial_weights", (False,), "use --pretrained_checkpoint"),
    compat("add_od_labels", (False,), NO_OD),
    compat("use_asr", (False,), "ASR text is not part of FAVD"),
    compat("unique_labels_on", (False,), NO_OD),
    compat("no_sort_by_conf", (False,), NO_OD),
    compat("od_label_conf", (0.0,), NO_OD, F),
    compat("text_mask_type", ("random",), "only random MLM masking exists (upstream's other modes were never wired)"),
    compat("tag_to_mask", (["noun", "verb"],), NO_POS, S, "+"),
    compat("mask_tag_prob", (0.8, -1.0), NO_POS, F),
    compat("tagger_model_path", ("models/flair/en-pos-ontonotes-fast-v0.5.pt",), NO_POS),
    compat("random_mask_prob", (0.0,), NEVER_USED, F),
    compat("mask_img_feat", (False,), NEVER_USED),
    compat("max_masked_img_tokens", (10,), NEVER_USED, I),
    compat("tie_weights", (False,), "the LM head is untied in the released model"),
    compat("label_smoothing", (0.0,), "label smoothing is not implemented", F),
    compat("drop_worst_ratio", (0.0,), NO_DROP_WORST, F),
    compat("drop_worst_after", (0,), NO_DROP_WORST, I),
    compat("output_hidden_states", (False,), "not used by training"),
    compat("num_return_sequences", (1,), ONE_CAPTION, I),
    compat("num_keep_best", (1,), ONE_CAPTION, I),
    compat("repetition_penalty", (1.0,), "repetition penalty is not implemented", F),
    compat("use_cbs", (False,), NO_CBS),
    compat("use_hypo", (False,), NO_CBS),
    compat("decoding_constraint", (False,), NO_CBS),
    compat("remove_bad_endings", (False,), NO_CBS),
    compat("min_constraints_to_satisfy", (2,), NO_CBS, I),
    compat("cider_cached_tokens", ("coco_caption/gt/coco-train-words.p",), "--scst takes CIDEr-D document "
           "frequencies from the captions of --train_yaml"),
    compat("patch_size", (32,), "the token stride is fixed by Video Swin's patch (2,4,4) and 3 merges = 32 pixels",
           I),
    compat("grid_feat", (True,), "visual tokens are always the feature grid"),
    compat("kinetics", ("400", "600"), "the Kinetics variant is the file given to --swin-checkpoint"),
    compat("pretrained_2d", (False,), "2D-ImageNet Swin initialisation is not supported"),
    compat("vidswin_size", ("base",), "the backbone size comes from --model_preset/--model_config"),
    compat("att_mode", ("default",), "only the default text/visual attention layout is implemented"),
    compat("reload_pretrained_swin", (False,), "pass --swin-checkpoint (it is applied before "
           "--pretrained-checkpoint)"),
    compat("transfer_method", (0, -1), "only the full weight transfer (0) is implemented", I),
    compat("att_mask_expansion", (0, -1), "learned masks must have the target shape; expansion is not implemented",
           I),
    compat("restore_ratio", (-1.0, 0.05), "upstream's restore.pt mechanism is replaced by --resume", F),
    compat("debug_speed", (False,), "use benchmarks/ for speed measurements"),
    compat("do_test", (False,), "use `avlformer infer` + `avlformer evaluate` on the test split"),
    compat("do_eval", (False,), "use `avlformer infer` + `avlformer evaluate`"),
    compat("eval_model_dir", ("",), "use `avlformer infer --eval_model_dir`"),
    compat("test_yaml", (["coco_caption/test.yaml"],), "use `avlformer infer` on the test split", S, "+"),
    compat("resume_checkpoint", ("None",), "use --resume (training) or `avlformer infer --eval_model_dir`"),
    compat("test_video_fname", ("None",), "use `avlformer infer --test_video_fname`"),
    compat("test_audio_fname", ("None",), "use `avlformer infer --test_audio_fname`"),
    compat("use_clip_model", (True, False), "upstream's config key was never read"),
)

BY_NAME: dict[str, Flag] = {flag.name: flag for flag in FLAGS}


def convert(flag: Flag, value: Any) -> Any:
    """A value from a config file, converted by the same rule as on the command line (argparse errors as
    ``ArgumentTypeError``)."""
    if flag.nargs in ("+", "*"):
        items = value if isinstance(value, list) else [value]
        converted = [flag.type(item) for item in items]
        if flag.choices:
            for item in converted:
                if item not in flag.choices:
                    raise argparse.ArgumentTypeError(f"{item!r} is not one of {', '.join(flag.choices)}")
        return converted
    converted = flag.type(value)
    if flag.choices and converted not in flag.choices:
        raise argparse.ArgumentTypeError(f"{converted!r} is not one of {', '.join(flag.choices)}")
    return converted
