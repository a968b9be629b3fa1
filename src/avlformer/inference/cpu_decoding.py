"""CPU decoding steps at one intra-op thread, set from outside the model by hooks.

A cached decoding step is about a hundred small products (two tokens through every weight), each a parallel
region that ends in a barrier: with two or more intra-op threads on a busy machine a descheduled worker stalls
every barrier for a scheduler slice, and a step runs several times slower than at one thread
(benchmarks/RESULTS.md). The encoders and the AV prefill are few large products, which the caller's threads do
speed up. So inference on the CPU runs each decoding step (a decoder forward of text tokens with a cache, and the
LM head) at one thread and everything else at the caller's count. The model's code is untouched: its modules and
any hooks a user puts on them run as they do anywhere else, and a GPU run never installs these.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


@contextlib.contextmanager
def decoding_steps_at_one_thread(decoder: nn.Module, head: nn.Module):
    """Within the block, hooks on ``decoder`` (the text transformer) and its LM ``head`` run each decoding step
    at one intra-op thread (the caller's count is restored after each)."""
    saved: list[int | None] = []

    def before(module, args, kwargs):
        text = args[0] if args else kwargs.get("input_ids")
        is_step = module is head or (text is not None and kwargs.get("cache") is not None)
        threads = torch.get_num_threads()
        saved.append(threads if is_step and threads > 1 else None)
        if saved[-1] is not None:
            torch.set_num_threads(1)

    def after(module, args, kwargs, output):
        threads = saved.pop()
        if threads is not None:
            torch.set_num_threads(threads)

    handles = [handle for module in (decoder, head) for handle in (
        module.register_forward_pre_hook(before, with_kwargs=True),
        module.register_forward_hook(after, with_kwargs=True, always_call=True))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
