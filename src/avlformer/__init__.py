"""AVLFormer: Fine-grained Audible Video Description (FAVD).

Subpackages: ``data`` (demo data, preprocessing, loaders), ``modeling`` (Video Swin, PaSST, text transformer,
the assembled model, checkpoints, generation), ``training`` (the loop, launched by ``run.sh``), ``inference``
(captioning videos), ``evaluation`` (caption metrics), ``demo`` (the end-to-end demo and its report).
"""

__version__ = "0.1.0"
