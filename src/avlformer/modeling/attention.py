"""The attention kernels every attention module of the model calls: ``softmax(q·kᵀ/√d + bias)·v``, chosen by the
config's ``attn_implementation`` (as Hugging Face's flag of that name):

* ``"sdpa"``: ``torch.nn.functional.scaled_dot_product_attention``, except where SDPA would take its math path
  (fp32 CPU training with dropout or a bias that needs a gradient): there the blocked kernel of
  :mod:`avlformer.modeling.cpu_attention`.
* ``"eager"``: the textbook matmul, softmax, dropout, matmul; the reference the others are tested against.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from avlformer.modeling.cpu_attention import biased_attention, uses_biased_attention

ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


def check_implementation(name: str) -> None:
    if name not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation must be one of {ATTENTION_IMPLEMENTATIONS}, got {name!r}")


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor | None, *,
              implementation: str = "sdpa", dropout_p: float = 0.0) -> torch.Tensor:
    """``query (..., Nq, d)``, ``key``/``value`` ``(..., Nk, d)``, ``bias`` broadcastable to ``(..., Nq, Nk)``
    (cast to the query's dtype) -> ``(..., Nq, d)``."""
    if bias is not None:
        bias = bias.to(query.dtype)
    if implementation == "eager":  # upstream's formulation
        scores = query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])
        if bias is not None:
            scores = scores + bias
        return F.dropout(scores.softmax(dim=-1), p=dropout_p) @ value
    if uses_biased_attention(query, bias, dropout_p):
        return biased_attention(query, key, value, bias, dropout_p=dropout_p)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=bias, dropout_p=dropout_p)
