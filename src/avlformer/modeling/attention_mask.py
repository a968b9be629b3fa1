"""The text/AV attention layout (docs/upstream.md §2.6, §3.5) and its additive bias.

Sequence order is ``[text (L) ; AV (V)]``. A mask value m in [0, 1] means "may attend" with strength m; the bias
fed to attention is ``-10000·(1-m)`` exactly as upstream, so soft learned values keep their meaning.

* text row i < text_len: text columns j <= i (causal), and every AV column;
* padding text rows i >= text_len: nothing (all-zero row, as upstream; their outputs are never used);
* AV rows: no text; AV columns through the learned mask σ(W) with diagonal 1 (all ones without a learned mask).

Upstream shipped this as a dense int64 tensor per sample from the data loader; here it is built on the model's
device from ``text_len``.
"""

from __future__ import annotations

import torch

MASK_BIAS = -10000.0


def learned_av_mask(weight: torch.Tensor, num_av_tokens: int, soft2hard: bool = False) -> torch.Tensor:
    """``(V*V, 1)`` logits -> ``(V, V)`` mask: σ(W) off the diagonal, 1 on it (W's diagonal gets no gradient).

    ``soft2hard`` thresholds at 0.5 (no gradient), upstream's ``--sparse_mask_soft2hard``."""
    expected = num_av_tokens * num_av_tokens
    if weight.shape != (expected, 1):
        raise ValueError(f"learn_vid_att weight has shape {tuple(weight.shape)}, expected ({expected}, 1) "
                         f"for {num_av_tokens} AV tokens")
    eye = torch.eye(num_av_tokens, device=weight.device, dtype=weight.dtype)
    mask = eye + (1 - eye) * torch.sigmoid(weight.view(num_av_tokens, num_av_tokens))
    if soft2hard:
        mask = (mask >= 0.5).to(weight.dtype)
    return mask


def sparsity_loss(weight: torch.Tensor, num_av_tokens: int) -> torch.Tensor:
    """Mean |off-diagonal σ(W)| over all V² entries (the diagonal counts as zeros), as upstream's
    ``get_loss_sparsity``."""
    eye = torch.eye(num_av_tokens, device=weight.device, dtype=weight.dtype)
    off_diagonal = (1 - eye) * torch.sigmoid(weight.view(num_av_tokens, num_av_tokens))
    return off_diagonal.abs().mean()


def build_attention_mask(text_len: torch.Tensor, max_text_len: int, num_av_tokens: int,
                         av_mask: torch.Tensor | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The dense ``(B, L+V, L+V)`` mask (1 = attend) for texts of lengths ``text_len`` padded to ``max_text_len``."""
    if text_len.dim() != 1:
        raise ValueError(f"text_len must be 1-D (batch,), got shape {tuple(text_len.shape)}")
    if int(text_len.max()) > max_text_len or int(text_len.min()) < 1:
        raise ValueError(f"text_len values must lie in [1, {max_text_len}], got {text_len.tolist()}")
    device = text_len.device
    batch, total = text_len.shape[0], max_text_len + num_av_tokens
    positions = torch.arange(max_text_len, device=device)
    valid_row = positions.unsqueeze(0) < text_len.unsqueeze(1)                      # (B, L)
    causal = positions.unsqueeze(1) >= positions.unsqueeze(0)                        # (L, L)
    mask = torch.zeros(batch, total, total, device=device, dtype=dtype)
    mask[:, :max_text_len, :max_text_len] = (causal.unsqueeze(0) & valid_row.unsqueeze(2)
                                             & valid_row.unsqueeze(1)).to(dtype)
    mask[:, :max_text_len, max_text_len:] = valid_row.unsqueeze(2).to(dtype)
    mask[:, max_text_len:, max_text_len:] = 1.0 if av_mask is None else av_mask.to(device=device, dtype=dtype)
    return mask


def mask_to_bias(mask: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Attention mask -> additive bias ``-10000·(1-m)``, shaped to broadcast over heads.

    ``(B, N, N)`` (query x key) becomes ``(B, 1, N, N)``; a key-padding mask ``(B, N)`` becomes ``(B, 1, 1, N)``."""
    if mask.dim() == 2:
        mask = mask[:, None, None, :]
    elif mask.dim() == 3:
        mask = mask[:, None]
    else:
        raise ValueError(f"attention mask must be (B, N) or (B, N, N), got shape {tuple(mask.shape)}")
    mask = mask.to(dtype or (mask.dtype if mask.is_floating_point() else torch.float32))
    return (1.0 - mask) * MASK_BIAS


def biased_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor | None,
                     constant_bias: torch.Tensor | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """``softmax(q·kᵀ/√d + bias + constant_bias)``, dropout, ``·v`` for training, where SDPA cannot use a fused
    kernel: its CPU kernels take no dropout and no bias that needs a gradient, so it falls back to a math path
    that runs about twice the memory passes over every (query x key) score tensor (a float dropout mask, a
    "safe" softmax) and keeps three of them for backward. This keeps two: the probabilities and a one-byte
    dropout mask (docs/training.md, "Training speed and memory").

    Same values as SDPA's math path within fp32 rounding, and the same dropout draws from the same torch
    generator state as ``F.dropout`` on the probabilities (a bernoulli per score in the same order). Any number
    of leading batch dims; ``bias`` (which may need a gradient) and ``constant_bias`` (which may not)
    broadcast over them and are added, not multiplied."""
    if constant_bias is not None and constant_bias.requires_grad:
        raise ValueError("biased_attention: constant_bias must not require a gradient; pass it as bias")
    return _BiasedAttention.apply(query, key, value, bias, constant_bias, float(dropout_p))


def uses_biased_attention(query: torch.Tensor) -> bool:
    """Whether training attention on ``query``'s device and dtype goes through :func:`biased_attention`: fp32 on
    the CPU. CUDA's memory-efficient SDPA kernel takes a bias that needs a gradient, and SDPA's math path computes
    half-precision inputs in fp32, which this function does not."""
    return query.device.type == "cpu" and query.dtype == torch.float32


class _BiasedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, bias, constant_bias, dropout_p):
        scale = query.shape[-1] ** -0.5
        scaled_query = query * scale
        scores = torch.matmul(scaled_query, key.transpose(-1, -2))
        for term in (bias, constant_bias):
            if term is not None:
                scores.add_(term)
        probs = torch.softmax(scores, dim=-1)
        del scores
        keep = None
        if dropout_p > 0.0:
            # bernoulli_ draws one value per element in order whatever the dtype, so a bool mask holds exactly
            # the draws F.dropout's float noise would hold, at a quarter of the bytes.
            keep = torch.empty_like(probs, dtype=torch.bool).bernoulli_(1.0 - dropout_p)
        dropped = probs if keep is None else (probs * keep).mul_(_dropout_scale(dropout_p, probs.dtype))
        ctx.save_for_backward(scaled_query, key, value, probs, keep)
        ctx.dropout_p, ctx.scale = dropout_p, scale
        ctx.bias_shape = None if bias is None else bias.shape
        return torch.matmul(dropped, value)

    @staticmethod
    def backward(ctx, grad_out):
        scaled_query, key, value, probs, keep = ctx.saved_tensors
        grad_query = grad_key = grad_value = grad_bias = None
        # F.dropout's float noise (0 or 1/(1-p)), rebuilt from the one-byte mask for this backward only.
        noise = None if keep is None else keep.to(probs.dtype).mul_(_dropout_scale(ctx.dropout_p, probs.dtype))
        if ctx.needs_input_grad[2]:
            dropped = probs if noise is None else probs * noise
            grad_value = _sum_to(torch.matmul(dropped.transpose(-1, -2), grad_out), value.shape)
            del dropped
        grad_probs = torch.matmul(grad_out, value.transpose(-1, -2))
        if noise is not None:
            grad_probs.mul_(noise)
            del noise
        grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
        del grad_probs
        if ctx.needs_input_grad[0]:
            grad_query = _sum_to(torch.matmul(grad_scores, key), scaled_query.shape).mul_(ctx.scale)
        if ctx.needs_input_grad[1]:
            grad_key = _sum_to(torch.matmul(grad_scores.transpose(-1, -2), scaled_query), key.shape)
        if ctx.needs_input_grad[3]:
            grad_bias = _sum_to(grad_scores, ctx.bias_shape)
        return grad_query, grad_key, grad_value, grad_bias, None, None


def _dropout_scale(dropout_p: float, dtype: torch.dtype) -> torch.Tensor:
    # F.dropout's kept value, computed as it computes it: 1 divided in the tensor's dtype by (1 - p).
    return torch.ones((), dtype=dtype).div_(1.0 - dropout_p)


def _sum_to(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Reduce a broadcast gradient back to ``shape`` (leading dims added by broadcasting, and dims of size 1)."""
    if grad.shape == shape:
        return grad
    lead = grad.dim() - len(shape)
    dims = tuple(range(lead)) + tuple(lead + i for i, size in enumerate(shape)
                                      if size == 1 and grad.shape[lead + i] != 1)
    return grad.sum(dims, keepdim=True).view(shape) if dims else grad.view(shape)
