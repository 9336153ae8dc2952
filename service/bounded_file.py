"""Reading a small configuration file whole, bounded, as UTF-8 text.

The callers file and the key file are both read at start-up and on every reload; a path pointed
at the wrong file (a log, a device) must fail with one clear line, not fill memory.
"""

from __future__ import annotations

from pathlib import Path

from service.config import ConfigError


def read_bounded_text(path: Path, *, limit: int, what: str) -> str:
    """The text of ``path``; ConfigError when it cannot be read, is larger than ``limit`` bytes,
    or is not UTF-8. ``what`` opens each message (e.g. the variable that named the file); a
    message names the path and never quotes the content, which may be a secret."""
    try:
        with path.open("rb") as file:
            data = file.read(limit + 1)
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise ConfigError(f"{what}: {path} is larger than {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{what}: {path} is not UTF-8 text") from None
