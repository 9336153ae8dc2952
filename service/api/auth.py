"""Caller identity from gRPC metadata: ``authorization: Bearer <key>``, or a client certificate."""

from __future__ import annotations

from collections.abc import Iterable

from service.domain.callers import Caller, CallerRegistry
from service.errors import UnauthenticatedError

_BEARER = "bearer "


def bearer_key(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            if text[: len(_BEARER)].lower() == _BEARER:
                return text[len(_BEARER) :].strip()
            return None
    return None


class Authenticator:
    """Resolves the caller of an RPC.

    With mutual TLS, a client certificate whose common name is a caller id identifies that
    caller when no bearer key is sent (the CA configured for mTLS vouches for it).
    """

    def __init__(self, registry: CallerRegistry, *, trust_client_certificates: bool = False):
        self._registry = registry
        self._trust_certs = trust_client_certificates

    def authenticate(
        self,
        metadata: Iterable[tuple[str, str | bytes]] | None,
        peer_common_names: Iterable[bytes] | None = None,
    ) -> Caller:
        key = bearer_key(metadata)
        if key:
            caller = self._registry.authenticate(key)
            if caller is None:
                raise UnauthenticatedError("the caller key is not known", reason="API_KEY_INVALID")
            return caller
        if self._trust_certs and peer_common_names:
            for name in peer_common_names:
                caller = self._registry.get(name.decode("utf-8", "replace"))
                if caller is not None:
                    return caller
        raise UnauthenticatedError(
            "missing 'authorization: Bearer <key>' metadata", reason="API_KEY_MISSING"
        )
