"""Attention with an additive bias for fp32 training on the CPU, computed block by block in cache, where SDPA
would take its math path (docs/training.md, "Attention with a learned or trainable bias" and "Dropout draws").
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

# Score elements per block (4 MiB of fp32): smaller blocks pay more per-block overhead than they save, larger
# ones gain nothing more (docs/training.md).
BLOCK_SCORES = 1 << 20
_UINT32_RANGE = 1 << 32


def uses_biased_attention(query: torch.Tensor, bias: torch.Tensor | None, dropout_p: float = 0.0) -> bool:
    """Whether attention on ``query`` goes through :func:`biased_attention`: fp32 on the CPU with gradients, where
    SDPA would take its math path (dropout, or a bias that needs a gradient)."""
    falls_back = dropout_p > 0 or (bias is not None and bias.requires_grad)
    return (torch.is_grad_enabled() and falls_back and query.device.type == "cpu"
            and query.dtype == torch.float32)


def biased_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: torch.Tensor | None,
                     dropout_p: float = 0.0) -> torch.Tensor:
    """``softmax(q·kᵀ/√d + bias)``, dropout, ``·v``, with gradients for q, k, v and ``bias``: ``query``
    ``(..., Nq, d)``, ``key``/``value`` ``(..., Nk, d)`` with the same leading dims (at least one), ``bias``
    broadcastable to ``(..., Nq, Nk)``. Equals SDPA's math path within fp32 rounding without dropout."""
    if query.dim() < 3 or key.shape[:-2] != query.shape[:-2] or value.shape[:-1] != key.shape[:-1]:
        raise ValueError(f"biased_attention: query {tuple(query.shape)}, key {tuple(key.shape)} and value "
                         f"{tuple(value.shape)} need the same leading dims and matching key/value lengths")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"biased_attention: dropout_p must lie in [0, 1), got {dropout_p}")
    return _BiasedAttention.apply(query, key, value, bias, float(dropout_p))


class KeepDraws:
    """One call's dropout draws: uint32s (PCG64's raw output, two per 64-bit word), each kept when at or above
    ``p·2^32``, in memory order through the blocks, so the mask is the same whatever the block size."""

    def __init__(self, dropout_p: float):
        self.bits = np.random.PCG64(int(torch.randint(0, 2**62, ())))
        self.threshold = np.uint32(min(round(dropout_p * _UINT32_RANGE), _UINT32_RANGE - 1))
        self.carry = None  # the second half of a word the previous block left unused

    def fill(self, keep: torch.Tensor) -> torch.Tensor:
        """Draw into a contiguous bool tensor (True = kept); returns it."""
        flat = keep.view(-1).numpy()
        start = 0
        if self.carry is not None and flat.size:
            flat[0], start, self.carry = self.carry >= self.threshold, 1, None
        count = flat.size - start
        if count:
            draws = self.bits.random_raw((count + 1) // 2).view(np.uint32)
            if count % 2:
                self.carry = draws[-1]
            np.greater_equal(draws[:count], self.threshold, out=flat[start:])
        return keep


class _Blocks:
    """The blocks of one attention call: every leading index but the last, a run of the last leading dim (heads)
    and a run of query rows, sized so that a block holds at most ``BLOCK_SCORES`` scores."""

    def __init__(self, query: torch.Tensor, num_keys: int):
        *self.outer, self.heads = query.shape[:-2]
        self.rows = query.shape[-2]
        per_head = max(1, self.rows * num_keys)  # no rows (a pass that keeps only keys/values): one empty block
        if per_head <= BLOCK_SCORES:
            self.head_step, self.row_step = max(1, BLOCK_SCORES // per_head), max(1, self.rows)
        else:
            self.head_step, self.row_step = 1, max(1, BLOCK_SCORES // num_keys)
        self.lead_dims = len(self.outer) + 1
        # Scratch buffers of this many elements hold any one block's scores, reused by every block (fresh
        # temporaries would fault in pages).
        self.largest = min(self.head_step, self.heads) * min(self.row_step, self.rows) * num_keys

    def __iter__(self):
        for outer in itertools.product(*(range(n) for n in self.outer)):
            for head in range(0, self.heads, self.head_step):
                for row in range(0, self.rows, self.row_step):
                    yield outer, slice(head, head + self.head_step), slice(row, row + self.row_step)

    def padded(self, tensor: torch.Tensor | None) -> torch.Tensor | None:
        """A tensor that broadcasts to ``(..., Nq, Nk)``, viewed with all of those dims (size 1 where missing)."""
        if tensor is None:
            return None
        return tensor.reshape((1,) * (self.lead_dims + 2 - tensor.dim()) + tuple(tensor.shape))

    def operand(self, padded: torch.Tensor, outer, heads: slice, rows: slice) -> torch.Tensor:
        """A block of a :meth:`padded` tensor, broadcasting over the block's ``(heads, rows, keys)``."""
        index = tuple(i if size != 1 else 0 for i, size in zip(outer, padded.shape))
        head_dim, row_dim = padded.shape[-3], padded.shape[-2]
        return padded[index][heads if head_dim != 1 else slice(0, 1), rows if row_dim != 1 else slice(0, 1)]


def _view(scratch: torch.Tensor, shape) -> torch.Tensor:
    return scratch[:shape.numel()].view(shape)


class _BiasedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, bias, dropout_p):
        scale = query.shape[-1] ** -0.5
        scaled_query = query * scale
        key, value = key.contiguous(), value.contiguous()
        blocks = _Blocks(query, key.shape[-2])
        probs = query.new_empty((*query.shape[:-1], key.shape[-2]))
        out = query.new_empty((*query.shape[:-1], value.shape[-1]))
        keep = None if dropout_p == 0.0 else torch.empty(probs.shape, dtype=torch.bool)
        draws = None if keep is None else KeepDraws(dropout_p)
        scores_scratch = probs.new_empty(blocks.largest)
        dropped_scratch = None if keep is None else probs.new_empty(blocks.largest)
        padded_bias = blocks.padded(bias)
        for outer, heads, rows in blocks:
            block_probs = probs[outer][heads, rows]
            scores = torch.matmul(scaled_query[outer][heads, rows], key[outer][heads].transpose(-1, -2),
                                  out=_view(scores_scratch, block_probs.shape))
            if padded_bias is not None:
                scores.add_(blocks.operand(padded_bias, outer, heads, rows))
            torch._softmax(scores, -1, False, out=block_probs)
            if keep is not None:
                dropped = torch.mul(block_probs, draws.fill(keep[outer][heads, rows]),
                                    out=_view(dropped_scratch, block_probs.shape))
            else:
                dropped = block_probs
            torch.matmul(dropped, value[outer][heads], out=out[outer][heads, rows])
        kept_scale = 1.0 / (1.0 - dropout_p)
        if keep is not None:
            out.mul_(kept_scale)  # F.dropout's factor on the kept probabilities, applied to the (smaller) output
        ctx.save_for_backward(scaled_query, key, value, probs, keep)
        ctx.scale, ctx.kept_scale = scale, kept_scale
        ctx.bias_shape = None if bias is None else bias.shape
        return out

    @staticmethod
    def backward(ctx, grad_out):
        scaled_query, key, value, probs, keep = ctx.saved_tensors
        needs_query, needs_key, needs_value, needs_bias = ctx.needs_input_grad[:4]
        if keep is not None:
            grad_out = grad_out * ctx.kept_scale  # the kept values' factor, folded into the incoming gradient
        grad_out = grad_out.contiguous()
        blocks = _Blocks(scaled_query, key.shape[-2])
        grad_query = torch.empty_like(scaled_query) if needs_query else None
        grad_key = torch.zeros_like(key) if needs_key else None
        grad_value = torch.zeros_like(value) if needs_value else None
        grad_bias = scaled_query.new_zeros(ctx.bias_shape) if needs_bias else None
        padded_grad_bias = blocks.padded(grad_bias)
        grad_scratch, product_scratch = probs.new_empty(blocks.largest), probs.new_empty(blocks.largest)
        for outer, heads, rows in blocks:
            block_probs, block_grad_out = probs[outer][heads, rows], grad_out[outer][heads, rows]
            block_keep = None if keep is None else keep[outer][heads, rows]
            if needs_value:
                dropped = block_probs if block_keep is None else torch.mul(
                    block_probs, block_keep, out=_view(product_scratch, block_probs.shape))
                grad_value[outer][heads].baddbmm_(dropped.transpose(-1, -2), block_grad_out)
            grad_scores = torch.matmul(block_grad_out, value[outer][heads].transpose(-1, -2),
                                       out=_view(grad_scratch, block_probs.shape))
            if block_keep is not None:
                grad_scores.mul_(block_keep)
            # softmax backward, in place: p·(g - Σ g·p); torch's kernel for it takes no output buffer
            row_sums = torch.mul(grad_scores, block_probs, out=_view(product_scratch, block_probs.shape)).sum(
                -1, keepdim=True)
            grad_scores.sub_(row_sums).mul_(block_probs)
            if needs_query:
                torch.matmul(grad_scores, key[outer][heads], out=grad_query[outer][heads, rows])
            if needs_key:
                grad_key[outer][heads].baddbmm_(grad_scores.transpose(-1, -2), scaled_query[outer][heads, rows])
            if needs_bias:
                target = blocks.operand(padded_grad_bias, outer, heads, rows)  # summed over the dims it broadcasts
                dims = tuple(i for i, size in enumerate(target.shape) if size == 1 and grad_scores.shape[i] != 1)
                target.add_(grad_scores.sum(dims, keepdim=True) if dims else grad_scores)
        if needs_query:
            grad_query.mul_(ctx.scale)
        return grad_query, grad_key, grad_value, grad_bias, None
