"""Test fixtures in upstream's Video Swin layout, made from our state dicts."""

from __future__ import annotations

from typing import Mapping, Sequence

from torch import Tensor

from avlformer.modeling.video_swin import INDEX_SUFFIX, TABLE_SUFFIX, relative_position_index

UPSTREAM_PREFIX = "backbone."


def to_upstream_state_dict(
    our_state_dict: Mapping[str, Tensor], window_size: Sequence[int] = (8, 7, 7)
) -> dict[str, Tensor]:
    """Our state dict -> upstream ``backbone.*`` layout, re-inserting each block's relative_position_index
    (right after its bias table, as upstream orders them) so upstream's strict loading accepts it."""
    index = relative_position_index(window_size)
    table_rows = (2 * window_size[0] - 1) * (2 * window_size[1] - 1) * (2 * window_size[2] - 1)
    upstream: dict[str, Tensor] = {}
    for key, value in our_state_dict.items():
        if not key.startswith(UPSTREAM_PREFIX):
            raise ValueError(f"to_upstream_state_dict: key {key!r} is not a Video Swin encoder key")
        upstream[key] = value
        if key.endswith(TABLE_SUFFIX):
            if value.shape[0] != table_rows:
                raise ValueError(
                    f"{key}: {value.shape[0]} rows, but window {list(window_size)} needs {table_rows}"
                )
            upstream[key[: -len(TABLE_SUFFIX)] + INDEX_SUFFIX] = index.clone()
    return upstream
