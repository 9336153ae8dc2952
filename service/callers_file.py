"""Loads the callers file (TOML): who may call, with which key hash, models and limits.

[[callers]]
id = "billing-service"
key_sha256 = "9f86d081884c7d65…"       # sha256 of the key, hex; never the key itself
# or, while rotating a key, the old and the new one: key_sha256 = ["9f86…", "60303a…"]
allowed_models = ["openai/*", "anthropic/claude-*"]
[callers.limits]
requests_per_minute = 600
tokens_per_minute = 200000
usd_per_day = "25.00"                   # a decimal string: exact money
[callers.policy]                        # rules over [default_policy]: see policy_file.py
zdr = true

Any mistake (an unknown key or rule, a bad value) is one line naming the caller and the key,
at start-up and on reload alike (a reload that fails keeps the running callers).
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)
from pydantic_core import ErrorDetails

from service.bounded_file import read_bounded_text
from service.config import ConfigError
from service.domain.callers import Caller, CallerLimits
from service.domain.policy import Policy
from service.policy_file import RULE_NAMES, PolicySection, effective_policy

log = logging.getLogger(__name__)


class _Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    usd_per_day: Decimal | None = Field(default=None, gt=0)


_Digest = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$")]
MAX_KEYS_PER_CALLER = 8
"""A caller holds one key, or a few while rotating; more is a mistake in the file."""


class _Caller(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    key_sha256: list[_Digest] = Field(min_length=1, max_length=MAX_KEYS_PER_CALLER)
    """One hash, or a list of them (a string is a list of one)."""
    allowed_models: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    limits: _Limits = Field(default_factory=_Limits)
    policy: PolicySection | None = None

    @field_validator("key_sha256", mode="before")
    @classmethod
    def _one_or_more(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    def digests(self) -> tuple[bytes, ...]:
        return tuple(dict.fromkeys(bytes.fromhex(digest) for digest in self.key_sha256))

    @field_validator("allowed_models")
    @classmethod
    def _no_empty_patterns(cls, value: list[str]) -> list[str]:
        if any(not pattern.strip() for pattern in value):
            raise ValueError("allowed_models holds an empty pattern")
        return value


class _CallersFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default_policy: PolicySection | None = None
    callers: list[_Caller] = Field(min_length=1)


def _describe(raw: Any, error: ErrorDetails) -> str:
    """``caller 'billing': policy.zdr: Input should be a valid boolean``: the caller by its id
    (when it has one), then the key within it."""
    loc = list(error["loc"])
    who = ""
    if len(loc) >= 2 and loc[0] == "callers" and isinstance(loc[1], int):
        entries = raw.get("callers") if isinstance(raw, dict) else None
        entry = entries[loc[1]] if isinstance(entries, list) and loc[1] < len(entries) else None
        caller_id = entry.get("id") if isinstance(entry, dict) else None
        who = (
            f"caller {caller_id[:64]!r}: "
            if isinstance(caller_id, str) and caller_id
            else f"callers[{loc[1]}]: "
        )
        loc = loc[2:]
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
    where = where.removeprefix(".")
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "string_pattern_mismatch" and "providers" in where:
        message = "must be a provider slug, e.g. 'openai' or 'deepinfra/turbo'"
    if error["type"] == "extra_forbidden":
        in_policy = bool(loc) and loc[0] in ("policy", "default_policy") and len(loc) == 2
        message = f"unknown rule (rules: {RULE_NAMES})" if in_policy else "unknown key"
    return f"{who}{where}: {message}"


def parse_callers(text: str, *, source: str = "callers file") -> list[Caller]:
    raw: Any = None
    try:
        raw = tomllib.loads(text)
        parsed = _CallersFile.model_validate(raw)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(raw, exc.errors()[0])}") from None
    seen: set[str] = set()
    owners: dict[bytes, str] = {}
    callers = []
    for entry in parsed.callers:
        if entry.id in seen:
            raise ConfigError(f"{source}: caller id {entry.id!r} is given twice")
        seen.add(entry.id)
        digests = entry.digests()
        for digest in digests:
            other = owners.setdefault(digest, entry.id)
            if other != entry.id:
                raise ConfigError(f"{source}: callers {other!r} and {entry.id!r} share a key hash")
        callers.append(
            Caller(
                id=entry.id,
                key_sha256=digests[0] if len(digests) == 1 else digests,
                allowed_models=tuple(entry.allowed_models),
                limits=CallerLimits(
                    requests_per_minute=entry.limits.requests_per_minute,
                    tokens_per_minute=entry.limits.tokens_per_minute,
                    usd_per_day=entry.limits.usd_per_day,
                ),
                policy=effective_policy(parsed.default_policy, entry.policy),
            )
        )
    return callers


MAX_CALLERS_FILE_BYTES = 16 * 1024 * 1024
"""Tens of thousands of callers fit in far less; a larger file is the wrong file."""


def log_policies(callers: Sequence[Caller]) -> None:
    """One INFO line per distinct policy: its id, its rules and the callers it applies to, so
    the ``policy_id`` of a ledger row can be traced back to the rules it stood for."""
    by_policy: dict[str, tuple[Policy, list[str]]] = {}
    for caller in callers:
        by_policy.setdefault(caller.policy.id, (caller.policy, []))[1].append(caller.id)
    for policy_id, (policy, ids) in sorted(by_policy.items()):
        log.info(
            "caller policy",
            extra={"policy_id": policy_id, "policy_rules": policy.rules(), "callers": ids},
        )


def load_callers(path: Path) -> list[Caller]:
    text = read_bounded_text(path, limit=MAX_CALLERS_FILE_BYTES, what="callers file")
    return parse_callers(text, source=str(path))
