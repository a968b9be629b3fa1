"""What the captioning page shows besides the caption: the frames the model was given, the spectrogram of the
audio it heard, and its learned audio-visual attention mask, each as a ``data:`` URI (the page loads nothing
from anywhere else)."""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
from PIL import Image


FREQUENCY_ROWS = 128      # mel-like rows after folding the STFT bins
MASK_DISPLAY_PIXELS = 320     # the mask is drawn at least this large (nearest neighbour, so cells stay square)


def png_uri(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def jpeg_uri(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _colour(values: np.ndarray) -> np.ndarray:
    """0..1 -> RGB along a dark-blue..yellow ramp (no plotting library needed)."""
    stops = np.array([[13, 8, 135], [126, 3, 168], [204, 71, 120], [248, 149, 64], [240, 249, 33]], np.float32)
    position = np.clip(values, 0, 1) * (len(stops) - 1)
    low = np.floor(position).astype(int).clip(0, len(stops) - 2)
    frac = (position - low)[..., None]
    return (stops[low] * (1 - frac) + stops[low + 1] * frac).astype(np.uint8)


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
    return _colour(np.flipud(db.numpy()))


def attention_mask(mask: torch.Tensor | None, num_video_tokens: int) -> np.ndarray | None:
    """The (V, V) learned AV->AV mask (rows attend to columns; video tokens first, then audio), as RGB with the
    video/audio boundary marked; None for a model without a learned mask."""
    if mask is None:
        return None
    image = _colour(mask.detach().float().cpu().numpy())
    scale = max(1, -(-MASK_DISPLAY_PIXELS // image.shape[0]))
    image = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
    edge = num_video_tokens * scale
    if 0 < edge < image.shape[0]:
        image[edge, :] = image[:, edge] = (255, 255, 255)
    return image
