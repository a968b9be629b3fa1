"""Frames of a TSV row -> a uint8 clip (T, 3, H, W) with upstream's geometry (docs/upstream.md §2.2), processed as
one tensor; ``normalize`` turns it into the float model input on the model's device (docs/data.md, "Loading").
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from typing import Sequence

import numpy as np
import torch
import torchvision.io
from PIL import Image
from torchvision.transforms.v2 import functional as TF

_RGB = torchvision.io.ImageReadMode.RGB

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
# (x / 255 - mean) / std folded into one multiply-add.
_SCALE = 1.0 / (255.0 * _STD)
_SHIFT = -_MEAN / _STD


def sample_indices(num_stored: int, num_frames: int) -> list[int]:
    """Upstream's uniform temporal sampling: ``round(k * (num_stored - 1) / (num_frames - 1))`` (Python round).
    With as many stored frames as wanted this is the identity. Upstream returned an all-zero clip when fewer
    frames were stored; we repeat frames instead, which the same formula gives."""
    if num_stored <= 0:
        raise ValueError("sample_indices: the row holds no frames")
    if num_frames == 1:
        return [0]
    step = (num_stored - 1) / (num_frames - 1)
    return [round(k * step) for k in range(num_frames)]


def _b64decode(field: str | bytes) -> bytes:
    # Non-alphabet bytes (a stray '\r', spaces) are skipped, as a lenient reader should; a frame that is not
    # base64 at all fails in the JPEG decode that follows.
    try:
        return base64.b64decode(field)
    except (binascii.Error, ValueError):
        return b""


def _decode_batch(payloads: list[bytes]) -> list[torch.Tensor] | None:
    """torchvision's batched libjpeg-turbo decode (its 0.29 deprecation warning silenced); None when it fails,
    and the caller falls back to Pillow."""
    # frombuffer refuses an empty buffer; an empty tensor fails in decode_jpeg like any other bad frame.
    tensors = [torch.frombuffer(bytearray(p), dtype=torch.uint8) if p else torch.empty(0, dtype=torch.uint8)
               for p in payloads]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*image decoding and encoding capabilities.*deprecated")
            return torchvision.io.decode_jpeg(tensors, mode=_RGB)
    except (RuntimeError, ValueError):
        return None  # some frame is bad: decode one by one to find it


def _decode_pil(payload: bytes) -> torch.Tensor | None:
    """One JPEG -> uint8 (3, H, W) with Pillow, or None when it does not decode."""
    try:
        with Image.open(io.BytesIO(payload)) as image:
            array = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    except (OSError, ValueError, SyntaxError):
        return None
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def decode_jpegs(b64_frames: Sequence[str | bytes], source: str = "frames") -> torch.Tensor:
    """Base64 JPEG strings -> uint8 (T, 3, H, W). A frame that does not decode becomes black (as upstream), with
    a warning naming ``source``; a clip where nothing decodes is an error."""
    payloads = [_b64decode(field) for field in b64_frames]
    images = _decode_batch(payloads) or [_decode_pil(payload) for payload in payloads]
    good = [image for image in images if image is not None]
    if not good:
        raise ValueError(f"{source}: none of the {len(images)} JPEG frames could be decoded")
    shapes = {tuple(image.shape) for image in good}
    if len(shapes) != 1:
        raise ValueError(f"{source}: frames of different sizes in one clip: {sorted(shapes)}")
    if len(good) < len(images):
        warnings.warn(f"{source}: {len(images) - len(good)} of {len(images)} frames did not decode; "
                      f"using black frames")
        images = [image if image is not None else torch.zeros_like(good[0]) for image in images]
    return torch.stack(images)


def resize_short_side(clip: torch.Tensor, size: int) -> torch.Tensor:
    """Shorter side to ``size``, longer side ``int(size * long / short)`` (truncated), bilinear with antialias."""
    height, width = clip.shape[-2:]
    short, long = min(height, width), max(height, width)
    if short == size:
        return clip
    new_long = int(size * long / short)
    new_size = [size, new_long] if height <= width else [new_long, size]
    return TF.resize(clip, new_size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)


def crop_offsets(height: int, width: int, size: int, train: bool,
                 rng: np.random.Generator | None = None) -> tuple[int, int]:
    """(top, left) of the ``size`` x ``size`` crop: random in train (one draw per clip), centred otherwise."""
    if height < size or width < size:
        raise ValueError(f"crop: frame {height}x{width} is smaller than the crop size {size}")
    if train:
        if rng is None:
            raise ValueError("crop_offsets(train=True) needs an rng")
        return int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
    return round((height - size) / 2), round((width - size) / 2)


def normalize(clip: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W), any strides, on any device -> contiguous float32 there, /255 and ImageNet mean/std
    (one copy, then one in-place multiply-add)."""
    out = torch.empty(clip.shape, dtype=torch.float32, device=clip.device)
    out.copy_(clip)
    return torch.addcmul(_SHIFT.to(clip.device), out, _SCALE.to(clip.device), out=out)  # .to: no copy on the CPU


def frames_for_model(frames: torch.Tensor) -> torch.Tensor:
    """What the video encoder takes: uint8 frames (the loaders' output) normalised where they are; frames that
    are already floating point are taken as normalised and passed through."""
    return normalize(frames) if frames.dtype == torch.uint8 else frames


def clip_from_frames(b64_frames: Sequence[str | bytes], *, num_frames: int, image_size: int, train: bool,
                     rng: np.random.Generator | None = None, source: str = "frames") -> torch.Tensor:
    """Base64 JPEG frames of one video -> uint8 (num_frames, 3, image_size, image_size), contiguous; the model
    normalises them (``frames_for_model``)."""
    indices = sample_indices(len(b64_frames), num_frames)
    # Decode each distinct stored frame once, then gather (frames repeat when fewer are stored than wanted).
    unique = sorted(set(indices))
    decoded = decode_jpegs([b64_frames[i] for i in unique], source)
    position = {stored: row for row, stored in enumerate(unique)}
    if len(unique) != len(indices):
        decoded = decoded[[position[i] for i in indices]]
    clip = resize_short_side(decoded, image_size)
    top, left = crop_offsets(clip.shape[-2], clip.shape[-1], image_size, train, rng)
    return clip[..., top:top + image_size, left:left + image_size].contiguous()
