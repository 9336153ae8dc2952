"""Loads the callers file (TOML): who may call, with which key hash, models and limits.

[[callers]]
id = "billing-service"
key_sha256 = "9f86d081884c7d65…"       # sha256 of the key, hex; never the key itself
allowed_models = ["openai/*", "anthropic/claude-*"]
[callers.limits]
requests_per_minute = 600
tokens_per_minute = 200000
usd_per_day = "25.00"                   # a decimal string: exact money
"""

from __future__ import annotations

import tomllib
from decimal import Decimal
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from service.config import ConfigError
from service.domain.callers import Caller, CallerLimits


class _Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    usd_per_day: Decimal | None = Field(default=None, gt=0)


class _Caller(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    key_sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    allowed_models: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    limits: _Limits = Field(default_factory=_Limits)

    @field_validator("allowed_models")
    @classmethod
    def _no_empty_patterns(cls, value: list[str]) -> list[str]:
        if any(not pattern.strip() for pattern in value):
            raise ValueError("allowed_models holds an empty pattern")
        return value


class _CallersFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    callers: list[_Caller] = Field(min_length=1)


def parse_callers(text: str, *, source: str = "callers file") -> list[Caller]:
    try:
        raw = tomllib.loads(text)
        parsed = _CallersFile.model_validate(raw)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"{source}: {where}: {first['msg']}") from None
    seen: set[str] = set()
    callers = []
    for entry in parsed.callers:
        if entry.id in seen:
            raise ConfigError(f"{source}: caller id {entry.id!r} is given twice")
        seen.add(entry.id)
        callers.append(
            Caller(
                id=entry.id,
                key_sha256=bytes.fromhex(entry.key_sha256),
                allowed_models=tuple(entry.allowed_models),
                limits=CallerLimits(
                    requests_per_minute=entry.limits.requests_per_minute,
                    tokens_per_minute=entry.limits.tokens_per_minute,
                    usd_per_day=entry.limits.usd_per_day,
                ),
            )
        )
    return callers


def load_callers(path: Path) -> list[Caller]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read callers file {path}: {exc.strerror}") from None
    return parse_callers(text, source=str(path))
