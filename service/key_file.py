"""The gateway's OpenRouter key from a file (``OPENROUTER_API_KEY_FILE``, e.g. a mounted Secret).

Read at start-up and again on every reload, so a rotated Secret reaches new requests without a
restart. The key never appears in an error: only the file's path and what is wrong with it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

from service.config import ConfigError

MAX_KEY_FILE_BYTES = 4096
"""OpenRouter keys are under a hundred characters; anything this large is the wrong file."""


def read_key_file(path: Path) -> SecretStr:
    """The key in ``path`` (surrounding whitespace and a final newline removed)."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"OPENROUTER_API_KEY_FILE: cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ConfigError(
            f"OPENROUTER_API_KEY_FILE: {path} is larger than {MAX_KEY_FILE_BYTES} bytes"
        )
    try:
        key = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"OPENROUTER_API_KEY_FILE: {path} is not UTF-8 text") from None
    if not key:
        raise ConfigError(f"OPENROUTER_API_KEY_FILE: {path} is empty")
    if any(char.isspace() or not char.isprintable() for char in key):
        raise ConfigError(f"OPENROUTER_API_KEY_FILE: {path} must hold the key alone, on one line")
    return SecretStr(key)
