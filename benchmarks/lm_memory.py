"""Decoder training memory at the paper's sizes, batch 2, ``--precision bf16`` (autocast): the paper's BERT-base
decoder against a Qwen2.5-0.5B-shaped causal LM (random weights; nothing is downloaded) with LoRA rank 8 on
q_proj and v_proj (docs/models.md).

* Parameters: counted from the full-depth models built on the meta device (no memory).
* Activations: measured. The bytes autograd keeps for backward (``saved_tensors_hooks``, each storage once) in one
  training forward of the AV projections + decoder + loss on the CPU, fed encoder outputs of the paper's shapes
  (784 video tokens of Video Swin-B, 473 of PaSST-S) as ``train --features`` does, captions of 300 tokens. Run at
  1 and 2 layers; full depth = 1 layer + (L - 1) x (2 layers - 1 layer). Saved fp32 parameters are left out;
  the bf16 copies of weights that autocast makes and keeps for backward are counted apart (``weight_casts``).

The encoders are the same in both recipes and are not counted. Prints one JSON object as the last line.

    python benchmarks/lm_memory.py
"""

from __future__ import annotations

import json
import sys

import torch

from avlformer.modeling.avlformer import AVLFormer, AVLFormerConfig
from avlformer.modeling.hf_causal_lm import HFCausalLMConfig

BATCH, CAPTION = 2, 300
GB = 1e9
QWEN25_05B = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": 151936,
              "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
              "num_key_value_heads": 2, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
              "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "hidden_act": "silu"}
LORA = {"training": "lora", "lora_rank": 8, "lora_alpha": 16.0, "lora_target_modules": ["q_proj", "v_proj"]}


def config(decoder: str, layers: int) -> AVLFormerConfig:
    tree = AVLFormerConfig.paper().to_dict()
    if decoder == "bert":
        tree["text"]["num_layers"] = layers
    else:
        hf = {**QWEN25_05B, "num_hidden_layers": layers}
        part = HFCausalLMConfig(hf_config=hf, img_feature_dim=tree["img_feature_dim"], prompt_ids=list(range(8)),
                                eos_token_id=151643, **LORA)
        tree["text"], tree["learn_mask_enabled"] = {"type": "hf_causal_lm", **part.to_dict()}, False
    return AVLFormerConfig.from_dict(tree)


def decoder_parameters(decoder: str) -> dict:
    """Full depth, on the meta device: the decoder's parameters and those that train."""
    if decoder == "bert":
        with torch.device("meta"):
            model = AVLFormer(config("bert", 12))
        total = sum(p.numel() for p in model.part("text").parameters())
        return {"total": total, "trained": total}
    from peft import LoraConfig, inject_adapter_in_model
    from transformers import AutoModelForCausalLM

    from avlformer.modeling.hf_folder import config_object

    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(config_object(QWEN25_05B))
        lm = inject_adapter_in_model(LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]), lm)
    params = dict(lm.named_parameters())  # tied embeddings once
    adapters = sum(p.numel() for name, p in params.items() if "lora_" in name)
    projector = 512 * 896 + 896 + 896 * 896 + 896  # the mlp projector: Linear, GELU, Linear
    return {"total": sum(p.numel() for p in params.values()) + projector, "trained": adapters + projector}


def saved_bytes(decoder: str, layers: int) -> dict:
    cfg = config(decoder, layers)
    torch.manual_seed(0)
    model = AVLFormer(cfg).train()
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    param_shapes = {tuple(p.shape) for p in model.parameters() if p.dim() == 2}
    video_width = model.projection("video").in_features
    audio_width = model.projection("audio").in_features
    vocab = cfg.text.hf_config["vocab_size"] if decoder != "bert" else cfg.text.vocab_size
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab, (BATCH, CAPTION), generator=gen)
    masked = torch.zeros(BATCH, CAPTION, dtype=torch.bool)
    masked[:, 1:46] = True  # the paper's at most 45 masked positions per caption
    batch = {"video_features": torch.randn(BATCH, cfg.num_video_tokens, video_width),
             "audio_features": torch.randn(BATCH, cfg.num_av_tokens - cfg.num_video_tokens, audio_width),
             "input_ids": ids, "target_ids": ids.clone(), "masked_pos": masked,
             "text_len": torch.full((BATCH,), CAPTION)}
    seen, totals = set(), {"activations": 0, "weight_casts": 0}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen and storage.data_ptr() not in param_ptrs:
            seen.add(storage.data_ptr())
            cast = tensor.dtype == torch.bfloat16 and tuple(tensor.shape) in param_shapes
            totals["weight_casts" if cast else "activations"] += storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), \
            torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(batch)["loss"]
    del loss
    return totals


def measure(decoder: str, full_layers: int) -> dict:
    one, two = saved_bytes(decoder, 1), saved_bytes(decoder, 2)
    full = {key: one[key] + (full_layers - 1) * (two[key] - one[key]) for key in one}
    params = decoder_parameters(decoder)
    frozen = params["total"] - params["trained"]
    # fp32 master weights of what trains (+ gradient + AdamW's two moments); frozen weights stored in bf16 for
    # the LoRA LM (fp32 under plain autocast would double that figure), fp32 for the paper decoder (all train).
    frozen_bytes = 2 * frozen if decoder != "bert" else 0
    return {"layers": full_layers, "parameters_m": round(params["total"] / 1e6, 2),
            "trained_parameters_m": round(params["trained"] / 1e6, 2),
            "frozen_weights_gb": round(frozen_bytes / GB, 3),
            "trained_weights_grads_adam_gb": round(16 * params["trained"] / GB, 3),
            "activations_per_layer_gb": round((two["activations"] - one["activations"]) / GB, 3),
            "activations_gb": round(full["activations"] / GB, 3),
            "weight_casts_gb": round(full["weight_casts"] / GB, 3),
            "total_gb": round((frozen_bytes + 16 * params["trained"] + full["activations"]
                               + full["weight_casts"]) / GB, 3)}


def main() -> int:
    torch.set_num_threads(1)
    result = {"setting": {"batch": BATCH, "caption_tokens": CAPTION, "av_tokens": 1257, "precision": "bf16 autocast",
                          "lm": "Qwen2.5-0.5B-shaped, random", "lora": "r 8, alpha 16, q_proj v_proj"},
              "paper_bert_decoder": measure("bert", 12), "qwen25_05b_lora": measure("qwen", 24)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
