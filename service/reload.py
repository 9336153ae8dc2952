"""Reloads the callers file, the schemas folder and the OpenRouter key file without a restart.

On SIGHUP (``python -m service``) and whenever one of them changes (looked at every
``GATEWAY_RELOAD_INTERVAL_S``), a source is read and checked in a worker thread and, only if it
is entirely valid, swapped in at once on the event loop: a call sees the old configuration or
the new one, never a mixture. A bad file keeps the running configuration; one log line says
what is wrong, and ``llmgateway.config.reloads`` counts every reload by outcome.

Changes are found by content, not by modification time: a digest of the bytes (keyed with a
per-process random key, so not even a digest of the API key is comparable outside). That also
sees Kubernetes' way of updating a mounted ConfigMap or Secret (a symlink swapped to a new
directory), and edits made within one tick of a coarse file-system clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from service.callers_file import load_callers, log_policies
from service.config import ConfigError
from service.domain.callers import CallerRegistry
from service.domain.gateway import Gateway
from service.domain.schemas import SchemaLoadError, SchemaRegistry
from service.key_file import read_key_file
from service.telemetry.core import Instruments
from service.upstream.openrouter import OpenRouterClient

log = logging.getLogger(__name__)

_DIGEST_KEY: Final = os.urandom(32)
_MAX_FINGERPRINT_BYTES: Final = 64 * 1024 * 1024
"""Beyond this a file is not read for its digest (the load refuses far smaller files)."""

Commit = Callable[[], str]
"""Swaps a loaded source in (on the event loop) and describes it for the log line."""


@dataclass(frozen=True)
class ReloadSource:
    """One reloadable piece of configuration."""

    name: str
    """``callers``, ``schemas`` or ``openrouter_key``: the metric's and the log's label."""
    path: Path
    load: Callable[[], Commit]
    """Reads and checks the source (in a worker thread); raises ``ConfigError`` or
    ``SchemaLoadError`` when it is unusable. Returns the swap to run on the loop."""


@dataclass(frozen=True)
class ReloadOutcome:
    source: str
    ok: bool
    detail: str
    """What was loaded ("3 callers"), or what is wrong with the file."""


def fingerprint(path: Path) -> bytes | None:
    """A digest of a file's bytes, or of a folder's ``*.json`` files and their names; None
    when it cannot be read (the load then says why)."""
    digest = hashlib.blake2b(key=_DIGEST_KEY, digest_size=32)
    try:
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        for file in files:
            digest.update(file.name.encode("utf-8", "surrogateescape") + b"\0")
            if file.stat().st_size > _MAX_FINGERPRINT_BYTES:
                digest.update(b"too large")
                continue
            digest.update(file.read_bytes())
            digest.update(b"\0")
    except OSError:
        return None
    return digest.digest()


class ConfigReloader:
    """Reloads its sources on ``reload()`` and, every ``interval_s`` (0: never), when one of
    them changed. ``start()`` it after the first load, ``close()`` it before shutdown."""

    def __init__(
        self,
        sources: Sequence[ReloadSource],
        *,
        interval_s: float,
        instruments: Instruments | None = None,
    ) -> None:
        self._sources = tuple(sources)
        self._interval_s = interval_s
        self._instruments = instruments
        self._seen: dict[str, bytes | None] = {}
        self._lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        self.outcomes: list[ReloadOutcome] = []
        """Every reload so far, in order (tests wait on it with ``wait_for``)."""
        self._recorded = asyncio.Event()
        if instruments is not None:
            # Zero from the start, so that rates and alerts see the first failure as one.
            for source in self._sources:
                for outcome in ("ok", "failed"):
                    instruments.reloads.add((source.name, outcome), 0)

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(source.name for source in self._sources)

    async def start(self) -> None:
        """Note what the sources hold now (they were just loaded) and start watching."""
        for source in self._sources:
            self._seen[source.name] = await asyncio.to_thread(fingerprint, source.path)
        if self._interval_s > 0 and self._sources:
            self._watcher = asyncio.create_task(self._watch(), name="config-reload-watch")

    async def close(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def reload(self, *, only_changed: bool = False) -> list[ReloadOutcome]:
        """Load every source (or only those whose content changed) and swap in each valid
        one. Never raises for a bad source: its outcome says what is wrong."""
        outcomes: list[ReloadOutcome] = []
        async with self._lock:
            for source in self._sources:
                seen = await asyncio.to_thread(fingerprint, source.path)
                if only_changed and seen == self._seen.get(source.name):
                    continue
                # Noted even when the load fails, so a bad file is reported once, not at
                # every look; fixing it changes the digest again.
                self._seen[source.name] = seen
                outcomes.append(await self._load(source))
        return outcomes

    async def _load(self, source: ReloadSource) -> ReloadOutcome:
        try:
            commit = await asyncio.to_thread(source.load)
            detail = commit()
        except (ConfigError, SchemaLoadError) as exc:
            outcome = ReloadOutcome(source.name, False, str(exc))
        except Exception as exc:
            # A bug, not a bad file: still keep serving with what runs.
            log.exception("reload of %s failed unexpectedly", source.name)
            outcome = ReloadOutcome(source.name, False, type(exc).__name__)
        else:
            outcome = ReloadOutcome(source.name, True, detail)
        if outcome.ok:
            log.info("reloaded %s: %s", source.name, outcome.detail)
        else:
            log.error(
                "reload of %s failed, keeping the running configuration: %s",
                source.name,
                outcome.detail,
            )
        if self._instruments is not None:
            self._instruments.reloads.add((source.name, "ok" if outcome.ok else "failed"))
        self.outcomes.append(outcome)
        self._recorded.set()
        return outcome

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.reload(only_changed=True)

    async def wait_for(
        self,
        count: int,
        *,
        timeout: float = 10.0,  # noqa: ASYNC109 - a test's one-line wait, like Harness's
    ) -> list[ReloadOutcome]:
        """``outcomes`` once it holds ``count`` reloads."""
        async with asyncio.timeout(timeout):
            while len(self.outcomes) < count:
                self._recorded.clear()
                await self._recorded.wait()
        return self.outcomes


# --- the gateway's sources -----------------------------------------------------------------


def callers_source(path: Path, registry: CallerRegistry, gateway: Gateway) -> ReloadSource:
    def load() -> Commit:
        callers = load_callers(path)

        def commit() -> str:
            registry.replace(callers)
            gateway.callers_changed()
            log_policies(callers)
            return f"{len(callers)} caller(s) from {path}"

        return commit

    return ReloadSource("callers", path, load)


def schemas_source(directory: Path, registry: SchemaRegistry) -> ReloadSource:
    def load() -> Commit:
        loaded = SchemaRegistry.load(directory)

        def commit() -> str:
            registry.replace(loaded)
            return f"{len(loaded)} schema(s) from {directory}"

        return commit

    return ReloadSource("schemas", directory, load)


def api_key_source(path: Path, client: OpenRouterClient) -> ReloadSource:
    def load() -> Commit:
        key = read_key_file(path)

        def commit() -> str:
            client.use_api_key(key)
            return f"the OpenRouter key from {path}"

        return commit

    return ReloadSource("openrouter_key", path, load)
