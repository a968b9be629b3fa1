"""One line out of an exception (torch.load's advice, a DataLoader worker's traceback and multi-line messages
around the reason), for the commands that print a user's mistake without a traceback."""

from __future__ import annotations

import re

# Paragraphs torch.load adds around the reason a weights-only load failed.
_TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation of torch.load",
                 "(1) ", "(2) ", "WeightsUnpickler error:")
_RAISED_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt): ")


def one_line(error: BaseException) -> str:
    """The reason ``error`` carries, as one line (its type's name when it carries none)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if any(line.startswith("Original Traceback") for line in lines):
        # A DataLoader worker's error: the message is its traceback, whose last line is "Type: message".
        return _RAISED_LINE.sub("", lines[-1], count=1)
    if lines and lines[0].startswith("Weights only load failed"):
        reason = [line for line in lines if not line.startswith(_TORCH_ADVICE)]
        lines = reason or ["not a weights file torch can read safely"]
    return " ".join(lines) if lines else type(error).__name__
