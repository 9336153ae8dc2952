"""A throw-away PKI made with openssl for the TLS tests: a CA, a server certificate for
localhost/127.0.0.1, and two client certificates (one for caller alpha, one for a stranger)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    alpha_cert: Path
    alpha_key: Path
    stranger_cert: Path
    stranger_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _issue(directory: Path, name: str, common_name: str, *, server: bool) -> None:
    _openssl(
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
        "-out", f"{name}.csr", "-subj", f"/CN={common_name}", cwd=directory,
    )  # fmt: skip
    extensions = directory / f"{name}.ext"
    extensions.write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n" if server else "extendedKeyUsage=clientAuth\n"
    )
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", extensions.name,
        cwd=directory,
    )  # fmt: skip


def make_pki(directory: Path) -> Pki:
    """A new CA in ``directory`` and the certificates it signed."""
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=llmgw-test-ca", cwd=directory,
    )  # fmt: skip
    _issue(directory, "server", "localhost", server=True)
    _issue(directory, "alpha", "alpha", server=False)
    _issue(directory, "stranger", "nobody-we-know", server=False)
    return Pki(
        ca=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        alpha_cert=directory / "alpha.crt",
        alpha_key=directory / "alpha.key",
        stranger_cert=directory / "stranger.crt",
        stranger_key=directory / "stranger.key",
    )
