"""Writes the Kubernetes ConfigMap of the registered JSON Schemas from ``schemas/*.json``.

Usage: python scripts/k8s-schemas-configmap.py [OUT]  (default: the base's configmap-schemas.yaml)
``make k8s-schemas`` runs it; a test fails when the committed ConfigMap is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "deploy" / "kubernetes" / "base" / "configmap-schemas.yaml"
HEADER = """\
# Generated from schemas/*.json by `make k8s-schemas` (scripts/k8s-schemas-configmap.py); do
# not edit by hand: a test fails when it differs from schemas/. Add your organisation's own
# schemas to this ConfigMap in an overlay; they are reloaded without a restart.
apiVersion: v1
kind: ConfigMap
metadata:
  name: llm-gateway-schemas
data:
"""


def configmap(schemas: Path) -> str:
    parts = [HEADER]
    for path in sorted(schemas.glob("*.json")):
        text = path.read_text(encoding="utf-8")
        if not text.endswith("\n"):
            text += "\n"
        body = "".join(f"    {line}" if line.strip() else "\n" for line in text.splitlines(True))
        parts.append(f"  {path.name}: |\n{body}")
    return "".join(parts)


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else DEFAULT_OUT
    out.write_text(configmap(ROOT / "schemas"), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
