"""report.html: one self-contained page (inline PNGs and SVG) of what the demo did: per clip the frames, the
spectrogram, reference and predicted captions with wrong attributes highlighted; the metrics, the loss curve and
the learned AV mask, drawn as the captioning page draws them (``serve/render``).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from avlformer.data.synth import ATTRIBUTE_VALUES, SOUND_ATTRIBUTES, VISUAL_ATTRIBUTES, attribute_mentions
from avlformer.serve.render import attention_mask, image_uri, spectrogram


@dataclass
class ClipReport:
    clip_id: str
    frames: np.ndarray                  # uint8 (T, H, W, 3)
    waveform: np.ndarray                # float32 mono
    sample_rate: int
    reference: str
    prediction: str
    truth: dict                         # ground-truth attributes
    confidence: float | None = None
    silenced_prediction: str | None = None


@dataclass
class ReportData:
    title: str
    clips: list[ClipReport]
    metrics: dict                       # flat name -> number (or string)
    loss_curve: list[tuple[int, float]] = field(default_factory=list)
    mask: torch.Tensor | None = None    # (V, V) learned AV mask in [0, 1]
    num_video_tokens: int | None = None  # first tokens of the mask are video, the rest audio
    notes: list[str] = field(default_factory=list)


def frame_strip(frames: np.ndarray, count: int = 6, height: int = 72) -> Image.Image:
    """``count`` frames evenly spaced over the clip, side by side, each ``height`` pixels high."""
    if frames.ndim != 4 or len(frames) == 0:
        raise ValueError(f"frame_strip: expected (T, H, W, 3) frames, got shape {frames.shape}")
    picks = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    width = max(1, round(frames.shape[2] * height / frames.shape[1]))
    tiles = [Image.fromarray(frames[i]).resize((width, height), Image.BILINEAR) for i in picks]
    gap = 2
    strip = Image.new("RGB", (len(tiles) * (width + gap) - gap, height), (255, 255, 255))
    for k, tile in enumerate(tiles):
        strip.paste(tile, (k * (width + gap), 0))
    return strip


def loss_curve_svg(points: Sequence[tuple[int, float]], width: int = 520, height: int = 220) -> str:
    """Inline SVG line chart of (step, loss)."""
    points = [(float(s), float(v)) for s, v in points if math.isfinite(float(v))]
    if len(points) < 2:
        return "<p class='muted'>Not enough logged steps for a loss curve.</p>"
    left, right, top, bottom = 50, 10, 10, 30
    steps, losses = zip(*points)
    x0, x1 = min(steps), max(steps)
    y0, y1 = min(0.0, min(losses)), max(losses)
    sx = lambda s: left + (s - x0) / ((x1 - x0) or 1) * (width - left - right)  # noqa: E731
    sy = lambda v: top + (1 - (v - y0) / ((y1 - y0) or 1)) * (height - top - bottom)  # noqa: E731
    path = " ".join(f"{sx(s):.1f},{sy(v):.1f}" for s, v in points)
    ticks = "".join(
        f"<text x='{left - 6}' y='{sy(v) + 4:.1f}' text-anchor='end'>{v:.2f}</text>"
        f"<line x1='{left}' x2='{width - right}' y1='{sy(v):.1f}' y2='{sy(v):.1f}' class='grid'/>"
        for v in np.linspace(y0, y1, 5))
    return (f"<svg class='chart' width='{width}' height='{height}' viewBox='0 0 {width} {height}' "
            f"xmlns='http://www.w3.org/2000/svg' role='img' aria-label='training loss'>{ticks}"
            f"<polyline fill='none' stroke='#2b6cb0' stroke-width='2' points='{path}'/>"
            f"<text x='{left}' y='{height - 8}'>step {x0:.0f}</text>"
            f"<text x='{width - right}' y='{height - 8}' text-anchor='end'>step {x1:.0f}</text></svg>")


def highlight_caption(caption: str, truth: dict) -> str:
    """HTML of ``caption`` with each attribute mention marked right or wrong against ``truth``; attributes the
    caption never states are listed after it."""
    out, cursor, stated = [], 0, set()
    for mention in attribute_mentions(caption):
        if mention.start < cursor:
            continue  # overlapping wording: keep the first
        correct = mention.value is not None and mention.value == truth.get(mention.attribute)
        stated.add(mention.attribute)
        out.append(html.escape(caption[cursor:mention.start]))
        css = "ok" if correct else "wrong"
        tip = f"{mention.attribute}: {'correct' if correct else 'should be ' + str(truth.get(mention.attribute))}"
        out.append(f"<mark class='{css}' title='{html.escape(tip)}'>"
                   f"{html.escape(caption[mention.start:mention.end])}</mark>")
        cursor = mention.end
    out.append(html.escape(caption[cursor:]))
    missing = [a for a in ATTRIBUTE_VALUES if a not in stated]
    if missing:
        out.append(f" <span class='missing'>(missing: {html.escape(', '.join(missing))})</span>")
    return "".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1a202c;background:#f7fafc}
h1{margin:0 0 4px}h2{margin-top:32px;border-bottom:1px solid #cbd5e0;padding-bottom:4px}
.muted{color:#718096}.headline{display:flex;gap:16px;flex-wrap:wrap;margin:16px 0}
.card{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:12px 16px}
.card b{display:block;font-size:24px}table{border-collapse:collapse;background:#fff}
td,th{border:1px solid #e2e8f0;padding:4px 10px;text-align:right}th{background:#edf2f7}td:first-child,th:first-child{text-align:left}
.clips{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:16px}
.clip{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:12px}
.clip h3{margin:0 0 8px;font-size:15px}.clip img{display:block;margin:4px 0;max-width:100%}
.cap{margin:6px 0;line-height:1.45}.cap .label{font-weight:600;display:inline-block;min-width:96px}
mark.ok{background:#c6f6d5}mark.wrong{background:#fed7d7;color:#9b2c2c;font-weight:600}
.missing{color:#9b2c2c;font-style:italic}.chart text{font-size:11px;fill:#4a5568}.chart .grid{stroke:#e2e8f0}
.score-ok{color:#276749}.score-bad{color:#9b2c2c}
"""

# Marks the page as fully rendered (every image decoded) so a headless browser test can check it.
_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var good = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-total', String(imgs.length));
  document.body.setAttribute('data-images-ok', String(good));
  document.body.setAttribute('data-clips', String(document.querySelectorAll('.clip').length));
});
"""


def _format(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return html.escape(str(value))


def clip_accuracy_marks(clip: ClipReport) -> str:
    from avlformer.data.synth import parse_attributes

    parsed = parse_attributes(clip.prediction)
    cells = []
    for attribute in (*VISUAL_ATTRIBUTES, *SOUND_ATTRIBUTES):
        ok = parsed[attribute] == clip.truth.get(attribute)
        cells.append(f"<span class='{'score-ok' if ok else 'score-bad'}'>{'✓' if ok else '✗'} {attribute}</span>")
    return " · ".join(cells)


def clip_section(clip: ClipReport) -> str:
    strip = image_uri(np.asarray(frame_strip(clip.frames)))
    picture = spectrogram(torch.from_numpy(np.asarray(clip.waveform, np.float32)), clip.sample_rate)
    spec = image_uri(np.asarray(Image.fromarray(picture).resize((300, 72), Image.BILINEAR)))
    truth = ", ".join(f"{k}={clip.truth[k]}" for k in (*VISUAL_ATTRIBUTES, *SOUND_ATTRIBUTES) if k in clip.truth)
    confidence = f" · confidence {clip.confidence:.3f}" if clip.confidence is not None else ""
    silenced = ""
    if clip.silenced_prediction is not None:
        silenced = (f"<div class='cap'><span class='label'>audio silenced</span> "
                    f"{highlight_caption(clip.silenced_prediction, clip.truth)}</div>")
    return (f"<section class='clip' id='clip-{html.escape(clip.clip_id)}'>"
            f"<h3>{html.escape(clip.clip_id)} <span class='muted'>{html.escape(truth)}{confidence}</span></h3>"
            f"<img class='frames' alt='frames of {html.escape(clip.clip_id)}' src='{strip}'>"
            f"<img class='spectrogram' alt='spectrogram of {html.escape(clip.clip_id)}' src='{spec}'>"
            f"<div class='cap'><span class='label'>reference</span> {html.escape(clip.reference)}</div>"
            f"<div class='cap'><span class='label'>predicted</span> {highlight_caption(clip.prediction, clip.truth)}</div>"
            f"{silenced}<div class='cap'>{clip_accuracy_marks(clip)}</div></section>")


def headline_cards(metrics: dict) -> str:
    keys = [k for k in ("visual_accuracy", "sound_accuracy", "silenced_visual_accuracy", "silenced_sound_accuracy",
                        "sound_chance", "cider", "bleu4") if k in metrics]
    cards = "".join(f"<div class='card'><span class='muted'>{html.escape(k)}</span><b>{_format(metrics[k])}</b></div>"
                     for k in keys)
    return f"<div class='headline'>{cards}</div>"


def render_report(data: ReportData) -> str:
    mask_html = "<p class='muted'>The model has no learned attention mask.</p>"
    if data.mask is not None:
        picture = attention_mask(data.mask, data.num_video_tokens or 0)
        mask_html = (f"<img class='mask' alt='learned sparse attention mask' src='{image_uri(picture)}'>"
                     f"<p class='muted'>σ(W) between the {data.mask.shape[0]} audio-visual tokens (row attends to "
                     f"column; 1 = yellow, 0 = purple). The white lines separate the "
                     f"{data.num_video_tokens} video tokens from the audio tokens.</p>")
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in data.notes)
    clips = "".join(clip_section(c) for c in data.clips)
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{_format(v)}</td></tr>" for k, v in data.metrics.items())
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{html.escape(data.title)}</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(data.title)}</h1>{headline_cards(data.metrics)}"
        f"{'<ul class=muted>' + notes + '</ul>' if notes else ''}"
        f"<h2>Metrics</h2><table><tr><th>metric</th><th>value</th></tr>{rows}</table>"
        f"<h2>Training loss</h2>{loss_curve_svg(data.loss_curve)}"
        f"<h2>Learned sparse attention mask</h2>{mask_html}"
        f"<h2>Test clips ({len(data.clips)})</h2><div class='clips'>{clips}</div>"
        f"<script>{_SCRIPT}</script></body></html>")
