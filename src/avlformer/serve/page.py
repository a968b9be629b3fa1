"""The captioning page: one self-contained HTML document (no external assets). Its script posts an upload to
``/api/caption`` as a scripted client would; ``?video=NAME`` is captioned by the server and drawn in."""

from __future__ import annotations

import html

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:70rem;padding:0 1rem;color:#222}
h1{font-size:1.4rem} section{margin:1rem 0} .error{color:#a00;font-weight:600}
#caption{font-size:1.15rem;background:#f4f4f4;padding:.8rem;border-radius:.4rem}
#frames img{width:96px;height:96px;margin:2px;image-rendering:pixelated}
.pictures{display:flex;gap:2rem;flex-wrap:wrap} .pictures img{max-width:32rem;image-rendering:pixelated}
.muted{color:#666;font-size:.9rem}
"""

_SCRIPT = """
"use strict";
function show(id, on) { document.getElementById(id).hidden = !on; }
function render(data) {
  show("busy", false);
  if (data.error) {
    document.getElementById("error").textContent = data.error;
    show("error", true); show("result", false); return;
  }
  show("error", false);
  document.getElementById("caption").textContent = data.caption;
  document.getElementById("confidence").textContent = data.confidence.toFixed(3);
  document.getElementById("audio-source").textContent = data.audio_source;
  const warnings = document.getElementById("warnings");
  warnings.replaceChildren(...data.warnings.map(w => {
    const li = document.createElement("li"); li.textContent = w; return li; }));
  const frames = document.getElementById("frames");
  frames.replaceChildren(...(data.frames || []).map((src, i) => {
    const img = document.createElement("img"); img.src = src; img.alt = "frame " + i; return img; }));
  document.getElementById("spectrogram").src = data.spectrogram || "";
  document.getElementById("mask").src = data.attention_mask || "";
  show("mask-box", Boolean(data.attention_mask));
  show("result", true);
}
async function ask(query, options) {
  show("busy", true);
  try {
    const response = await fetch("api/caption?details=1" + query, options);
    render(await response.json());
  } catch (err) {
    render({error: "the server did not answer: " + err.message});
  }
}
function upload(file) {
  const form = new FormData(); form.append("video", file, file.name); return ask("", {method: "POST", body: form});
}
function pick(name) { return ask("&video=" + encodeURIComponent(name)); }
document.getElementById("upload-form").addEventListener("submit", ev => {
  ev.preventDefault();
  const file = document.getElementById("file").files[0];
  if (file) upload(file); else render({error: "choose a video file first"});
});
const picker = document.getElementById("pick-form");
if (picker) picker.addEventListener("submit", ev => {
  ev.preventDefault(); pick(document.getElementById("pick").value); });
// ?upload=NAME fetches a clip of the --videos folder and uploads it through the same path as the file input
// (lets a headless browser exercise the upload without a file dialog).
const params = new URLSearchParams(location.search);
if (params.get("upload")) {
  fetch("videos/" + encodeURIComponent(params.get("upload")))
    .then(r => { if (!r.ok) throw new Error("no such clip"); return r.blob(); })
    .then(blob => upload(new File([blob], params.get("upload"))))
    .catch(err => render({error: err.message}));
}
document.body.dataset.ready = "1";
"""


def _picker(videos: list[str], chosen: str | None) -> str:
    if not videos:
        return ""
    options = "".join(f'<option{" selected" if name == chosen else ""}>{html.escape(name)}</option>'
                      for name in videos)
    return (f'<form id="pick-form"><label>or pick a clip: <select id="pick" name="video">{options}</select></label>'
            f' <button type="submit">Caption</button></form>')


def _result_html(result: dict | None) -> str:
    result = result or {}
    error = result.get("error")
    ok = bool(result) and not error
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in result.get("warnings", []))
    frames = "".join(f'<img src="{src}" alt="frame {i}">' for i, src in enumerate(result.get("frames", [])))
    confidence = f'{result["confidence"]:.3f}' if ok else ""
    return f"""
<section id="busy" class="muted" hidden>captioning...</section>
<section id="error" class="error"{"" if error else " hidden"}>{html.escape(error or "")}</section>
<section id="result"{"" if ok else " hidden"}>
  <h2>Caption</h2><p id="caption">{html.escape(result.get("caption") or "")}</p>
  <p class="muted">confidence <span id="confidence">{confidence}</span> &middot; audio:
     <span id="audio-source">{html.escape(result.get("audio_source") or "")}</span></p>
  <ul id="warnings" class="muted">{warnings}</ul>
  <h2>Frames the model saw</h2><div id="frames">{frames}</div>
  <div class="pictures">
    <figure><img id="spectrogram" alt="spectrogram" src="{result.get("spectrogram", "")}">
      <figcaption class="muted">spectrogram of the audio the model heard</figcaption></figure>
    <figure id="mask-box"{"" if result.get("attention_mask") or not ok else " hidden"}>
      <img id="mask" alt="learned attention mask" src="{result.get("attention_mask") or ""}">
      <figcaption class="muted">learned audio-visual attention mask (video tokens, then audio; rows attend to
      columns)</figcaption></figure>
  </div>
</section>"""


def page(model_name: str, videos: list[str], max_upload_mb: float, result: dict | None = None,
         chosen: str | None = None) -> str:
    """The whole page; ``result`` (the JSON answer with details) is drawn in when the server captioned already."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>AVLFormer captioning</title>
<link rel="icon" href="data:,"><meta name="viewport" content="width=device-width, initial-scale=1">
<style>{_STYLE}</style></head>
<body data-model="{html.escape(model_name)}">
<h1>AVLFormer: fine-grained audible video description</h1>
<p class="muted">model: {html.escape(model_name)} &middot; uploads up to {max_upload_mb:g} MB, removed after
captioning &middot; JSON API: <code>POST /api/caption</code> with the file field <code>video</code></p>
<form id="upload-form"><label>Video: <input id="file" type="file" name="video" accept="video/*"></label>
 <button type="submit">Caption</button></form>
{_picker(videos, chosen)}
{_result_html(result)}
<script>{_SCRIPT}</script>
</body></html>"""
