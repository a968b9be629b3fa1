"""AVLFormer: Fine-grained Audible Video Description (FAVD).

The Python API, in the Hugging Face idiom (docs/api.md)::

    from avlformer import AVLFormer, caption

    model = AVLFormer.from_pretrained("runs/demo/best_checkpoint")   # a folder, a model.bin or a Hub id
    for result in caption(model, ["a.mp4", "b.mkv"], num_beams=3):
        print(result.video, result.caption, result.confidence)

The package layout is in docs/architecture.md.
"""

__version__ = "0.1.0"

# Exported lazily: `import avlformer` (and so every `avlformer` command) must not pay for torch until it is used.
_EXPORTS = {
    "AVLFormer": "avlformer.hub",
    "caption": "avlformer.inference.captioner",
    "Captioner": "avlformer.inference.captioner",
    "CaptionResult": "avlformer.inference.captioner",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'avlformer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
