"""``--video-encoder``, ``--audio-encoder`` and ``--decoder`` (a registered part name or ``hf:FOLDER``) and the
Hugging Face decoder's training flags, applied to the model configuration tree before the model flags
(docs/models.md). Every problem is a one-line error naming the flag, found before any weight is read."""

from __future__ import annotations

from typing import Any

from avlformer.training.flag_table import ArgumentError, flag_option

PART_FLAGS = {"video": "video_encoder", "audio": "audio_encoder", "text": "decoder"}
# flag -> the HFCausalLMConfig field it sets (only with --decoder hf:FOLDER)
DECODER_FLAGS = {"decoder_training": "training", "decoder_projector": "projector", "decoder_prompt": "prompt",
                 "decoder_lr_multiplier": "lr_multiplier", "lora_rank": "lora_rank", "lora_alpha": "lora_alpha",
                 "lora_dropout": "lora_dropout", "lora_target_modules": "lora_target_modules"}


def choose_parts(tree: dict[str, Any], init) -> None:
    """Replace the roles of ``tree`` that the part flags of ``init`` (the resolved init section) name; a decoder
    flag away from its default without ``--decoder hf:...`` is an error, not ignored."""
    from avlformer.modeling.part_choice import HF_PREFIX, part_from_spec
    from avlformer.training.config import InitSettings

    defaults = InitSettings()
    changed = [name for name in DECODER_FLAGS if getattr(init, name) != getattr(defaults, name)]
    if changed and not init.decoder.startswith(HF_PREFIX):
        raise ArgumentError(f"{flag_option(changed[0])} applies to a Hugging Face decoder only: add "
                            "--decoder hf:FOLDER")
    for role, flag in PART_FLAGS.items():
        spec = getattr(init, flag)
        if not spec:
            continue
        options = {"trust_remote_code": True} if init.trust_remote_code and spec.startswith(HF_PREFIX) else {}
        if role == "text" and spec.startswith(HF_PREFIX):
            options.update({field: getattr(init, name) for name, field in DECODER_FLAGS.items()})
            tree["learn_mask_enabled"] = False  # the learned AV mask is the BERT decoder's
        try:
            tree[role] = part_from_spec(role, spec, tree[role], img_feature_dim=tree["img_feature_dim"],
                                        options=options)
        except (FileNotFoundError, ValueError, TypeError) as err:
            raise ArgumentError(f"{flag_option(flag)} {spec}: {err}") from None
