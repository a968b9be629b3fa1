"""The text/AV attention layout (docs/upstream.md §2.6, §3.5) and its additive bias.

Sequence order is ``[text (L) ; AV (V)]``. A mask value m in [0, 1] means "may attend" with strength m; the bias
fed to attention is ``-10000·(1-m)`` exactly as upstream, so soft learned values keep their meaning.

* text row i < text_len: text columns j <= i (causal), and every AV column;
* padding text rows i >= text_len: nothing (all-zero row, as upstream; their outputs are never used);
* AV rows: no text; AV columns through the learned mask σ(W) with diagonal 1 (all ones without a learned mask).
"""

from __future__ import annotations

import torch

MASK_BIAS = -10000.0


def learned_av_mask(weight: torch.Tensor, num_av_tokens: int, soft2hard: bool = False) -> torch.Tensor:
    """``(V*V, 1)`` logits -> ``(V, V)`` mask: σ(W) off the diagonal, 1 on it; ``soft2hard`` thresholds at 0.5
    (no gradient), upstream's ``--sparse_mask_soft2hard``."""
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
    """Attention mask ``(B, Nq, N)`` (a key-padding mask: ``Nq`` = 1) -> additive bias ``-10000·(1-m)``,
    ``(B, 1, Nq, N)``."""
    if mask.dim() != 3:
        raise ValueError(f"attention mask must be (B, Nq, N), got shape {tuple(mask.shape)}")
    mask = mask[:, None].to(dtype or (mask.dtype if mask.is_floating_point() else torch.float32))
    return (1.0 - mask) * MASK_BIAS
