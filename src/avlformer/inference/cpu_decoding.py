"""CPU decoding steps at one intra-op thread, set from outside the model by hooks.

A cached decoding step is about a hundred small products, each a parallel region ending in a barrier: with
several intra-op threads on a busy machine a descheduled worker stalls every barrier (benchmarks/RESULTS.md).
The encoders and the AV prefill are few large products that threads do speed up, so only the decoding steps (a
decoder forward of text tokens with a cache, and the LM head) run at one thread. The model's code is untouched.
"""

from __future__ import annotations

import contextlib

from torch import nn

from avlformer.device import one_cpu_thread


@contextlib.contextmanager
def decoding_steps_at_one_thread(decoder: nn.Module, head: nn.Module):
    """Within the block, each decoding step of ``decoder`` and its LM ``head`` runs at one intra-op thread."""
    entered: list[contextlib.AbstractContextManager] = []

    def before(module, args, kwargs):
        text = args[0] if args else kwargs.get("input_ids")
        is_step = module is head or (text is not None and kwargs.get("cache") is not None)
        entered.append(one_cpu_thread() if is_step else contextlib.nullcontext())
        entered[-1].__enter__()

    def after(module, args, kwargs, output):
        entered.pop().__exit__(None, None, None)

    handles = [handle for module in (decoder, head) for handle in (
        module.register_forward_pre_hook(before, with_kwargs=True),
        module.register_forward_hook(after, with_kwargs=True, always_call=True))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
