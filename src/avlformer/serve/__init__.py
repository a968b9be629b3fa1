"""`avlformer serve`: a local captioning page and a JSON endpoint for one model (``server``: the routes,
``page``: the HTML, ``render``: frames, spectrogram and attention-mask pictures). Needs the ``[serve]`` extra
(``pip install 'avlformer[serve]'``). See docs/api.md, "The captioning page"."""

DEFAULT_MAX_UPLOAD_MB = 100.0   # largest accepted upload unless --max-upload-mb says otherwise
