"""The gateway's OpenRouter key from a file (``OPENROUTER_API_KEY_FILE``, e.g. a mounted Secret).

Read at start-up and again on every reload, so a rotated Secret reaches new requests without a
restart. The key never appears in an error: only the file's path and what is wrong with it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from service.bounded_file import read_bounded_text
from service.config import ConfigError

MAX_KEY_FILE_BYTES = 4096
"""OpenRouter keys are under a hundred characters; anything this large is the wrong file."""


def read_key_file(path: Path) -> SecretStr:
    """The key in ``path`` (surrounding whitespace and a final newline removed)."""
    key = read_bounded_text(path, limit=MAX_KEY_FILE_BYTES, what="OPENROUTER_API_KEY_FILE").strip()
    if not key:
        raise ConfigError(f"OPENROUTER_API_KEY_FILE: {path} is empty")
    if any(char.isspace() or not char.isprintable() for char in key):
        raise ConfigError(f"OPENROUTER_API_KEY_FILE: {path} must hold the key alone, on one line")
    return SecretStr(key)
