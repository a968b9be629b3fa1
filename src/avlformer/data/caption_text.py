"""Upstream's pre-cleaning of caption text, before any tokenizer sees it."""

from __future__ import annotations

import html
import re

_EMOJI = re.compile("[\U0001F600-\U0001F64F\U0001F300-\U0001F5FF\U0001F680-\U0001F6FF\U0001F1E0-\U0001F1FF]")


def clean_caption_text(text: str) -> str:
    """HTML entities unescaped, emoji removed."""
    return _EMOJI.sub("", html.unescape(text))
