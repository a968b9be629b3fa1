"""OpenAI CLIP state-dict names (``clip.load`` models, as inside upstream's TriLip.bin) -> transformers' CLIPModel.

The layouts differ in three ways: the names; attention keeps q, k and v in one ``in_proj`` matrix (transformers
has three); the two projections are stored as (in, out) matrices applied as ``x @ P`` (transformers' Linear
weights are (out, in)). ``openai_to_transformers`` undoes all three and checks that every tensor is consumed.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch

_DIRECT = {
    "logit_scale": "logit_scale",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",  # sic: transformers' spelling
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
}
_TRANSPOSED = {"text_projection": "text_projection.weight", "visual.proj": "visual_projection.weight"}
_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_BLOCK_PARTS = {
    "ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}


def _block_tensors(tower: str, index: str, rest: str, value: torch.Tensor) -> dict[str, torch.Tensor]:
    prefix = f"{tower}.encoder.layers.{index}."
    if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
        kind = rest.rsplit("_", 1)[1]
        query, key, val = value.chunk(3, dim=0)
        return {f"{prefix}self_attn.{name}_proj.{kind}": part
                for name, part in (("q", query), ("k", key), ("v", val))}
    module, _, kind = rest.rpartition(".")
    if module not in _BLOCK_PARTS:
        raise KeyError(rest)
    return {f"{prefix}{_BLOCK_PARTS[module]}.{kind}": value}


def openai_to_transformers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an OpenAI CLIP state dict for ``transformers.CLIPModel``; unknown names raise ValueError."""
    converted: dict[str, torch.Tensor] = {}
    unknown = []
    for name, value in state_dict.items():
        if name in ("input_resolution", "context_length", "vocab_size"):
            continue  # scalars some OpenAI exports carry; not parameters
        if name in _DIRECT:
            converted[_DIRECT[name]] = value
        elif name in _TRANSPOSED:
            converted[_TRANSPOSED[name]] = value.t().contiguous()
        elif match := _BLOCK.match(name):
            tower = "vision_model" if match.group(1) else "text_model"
            try:
                converted.update(_block_tensors(tower, match.group(2), match.group(3), value))
            except KeyError:
                unknown.append(name)
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(f"not OpenAI CLIP parameter names: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    return converted

