"""Pictures as ``data:`` URIs (a page that loads nothing from anywhere else), for the captioning page and the
demo's report: frames, the spectrogram of the audio the model heard, and its learned audio-visual attention mask."""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
from PIL import Image


FREQUENCY_ROWS = 128      # mel-like rows after folding the STFT bins
MASK_DISPLAY_PIXELS = 320     # the mask is drawn at least this large (nearest neighbour, so cells stay square)
_VIRIDIS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], float)


def image_uri(image: np.ndarray, kind: str = "png") -> str:
    """uint8 (H, W, 3) -> a ``data:`` URI of a PNG (lossless, for drawings) or ``"jpeg"`` (frames)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=kind.upper(), **({"quality": 90} if kind == "jpeg" else {}))
    return f"data:image/{kind};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def colour_ramp(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB (..., 3) along viridis (dark purple to yellow), interpolated linearly."""
    scaled = np.clip(np.nan_to_num(values), 0, 1) * (len(_VIRIDIS) - 1)
    positions = np.arange(len(_VIRIDIS))
    return np.stack([np.interp(scaled, positions, _VIRIDIS[:, c]) for c in range(3)], -1).round().astype(np.uint8)


def spectrogram(audio: torch.Tensor, sample_rate: int) -> np.ndarray:
    """Log-power spectrogram (low frequencies at the bottom) of the (1, S) waveform the model heard, as RGB."""
    wave = audio.reshape(-1).float().cpu()
    n_fft = 1024 if sample_rate >= 16000 else 256
    if wave.numel() < n_fft:
        wave = torch.nn.functional.pad(wave, (0, n_fft - wave.numel()))
    power = torch.stft(wave, n_fft=n_fft, hop_length=n_fft // 4, window=torch.hann_window(n_fft),
                       return_complex=True).abs().pow(2)
    # Fold the linear bins onto a log-spaced axis, as a mel scale would, so speech and music are readable.
    edges = np.unique(np.geomspace(1, power.shape[0], FREQUENCY_ROWS + 1).astype(int))
    rows = torch.stack([power[a:b].mean(0) for a, b in zip(edges[:-1], edges[1:])])
    db = 10 * torch.log10(rows + 1e-10)
    db = (db - (db.max() - 80)).clamp(min=0) / 80  # 80 dB of range below the peak
    return colour_ramp(np.flipud(db.numpy()))


def attention_mask(mask: torch.Tensor | None, num_video_tokens: int) -> np.ndarray | None:
    """The (V, V) learned AV->AV mask (rows attend to columns; video tokens first, then audio), as RGB with the
    video/audio boundary marked; None for a model without a learned mask."""
    if mask is None:
        return None
    image = colour_ramp(mask.detach().float().cpu().numpy())
    scale = max(1, -(-MASK_DISPLAY_PIXELS // image.shape[0]))
    image = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
    edge = num_video_tokens * scale
    if 0 < edge < image.shape[0]:
        image[edge, :] = image[:, edge] = (255, 255, 255)
    return image
