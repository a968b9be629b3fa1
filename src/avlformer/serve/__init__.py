"""`avlformer serve`: a local captioning page and a JSON endpoint for one model; needs the ``[serve]`` extra.
See docs/api.md, "The captioning page"."""

DEFAULT_MAX_UPLOAD_MB = 100.0   # largest accepted upload unless --max-upload-mb says otherwise
DEFAULT_QUEUE_SIZE = 32         # captioning requests accepted at once (running and waiting); more get a 503
DEFAULT_READ_TIMEOUT_S = 30.0   # a client silent this long mid-request (or this slow with its headers) is cut off
