"""Renders a kustomization offline (``kubectl kustomize`` is not installed here), for tests.

Only the kustomize features ``deploy/kubernetes`` uses are implemented, exactly: ``resources``
(files and directories), ``namespace``, ``labels`` (metadata labels only), ``images`` and
``patches`` holding JSON 6902 operations with a ``target``. Anything else in a kustomization is
refused, so an overlay cannot silently rely on a feature this renderer would skip; render such
an overlay with ``kubectl kustomize`` instead.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

Document = dict[str, Any]

_SUPPORTED = frozenset(
    {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}
)
_CLUSTER_SCOPED = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass"})


class KustomizeError(Exception):
    """The kustomization uses something this renderer does not implement, or is wrong."""


def render(directory: Path) -> list[Document]:
    """The documents ``kubectl kustomize directory`` would print (in resource order)."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    if not isinstance(spec, dict):
        raise KustomizeError(f"{directory}: kustomization.yaml is not a mapping")
    unknown = set(spec) - _SUPPORTED
    if unknown:
        raise KustomizeError(f"{directory}: unsupported kustomization fields {sorted(unknown)}")
    documents: list[Document] = []
    for entry in spec.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            documents += render(path)
        else:
            documents += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for patch in spec.get("patches", []):
        _apply_patch(directory, patch, documents)
    for label in spec.get("labels", []):
        if label.get("includeSelectors") or label.get("includeTemplates"):
            raise KustomizeError(f"{directory}: labels into selectors/templates unsupported")
        for document in documents:
            document.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    if "namespace" in spec:
        for document in documents:
            if document["kind"] not in _CLUSTER_SCOPED:
                document.setdefault("metadata", {})["namespace"] = spec["namespace"]
    for image in spec.get("images", []):
        for container in _containers(documents):
            if _image_name(container["image"]) == image["name"]:
                name = image.get("newName", image["name"])
                tag = image.get("newTag")
                container["image"] = f"{name}:{tag}" if tag else name
    return documents


def _containers(documents: list[Document]) -> Iterator[dict[str, Any]]:
    for document in documents:
        spec = document.get("spec", {}).get("template", {}).get("spec", {})
        yield from spec.get("initContainers", [])
        yield from spec.get("containers", [])


def _image_name(image: str) -> str:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return name[: len(name) - len(last)] + last.split(":", 1)[0]


def _apply_patch(directory: Path, patch: Mapping[str, Any], documents: list[Document]) -> None:
    if set(patch) != {"path", "target"}:
        raise KustomizeError(f"{directory}: a patch needs exactly `path` and `target`")
    operations = yaml.safe_load((directory / patch["path"]).read_text())
    if not isinstance(operations, list):
        raise KustomizeError(f"{patch['path']}: only JSON 6902 patches (a list) are supported")
    target = patch["target"]
    matched = [
        d
        for d in documents
        if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]
    ]
    if len(matched) != 1:
        raise KustomizeError(f"{patch['path']}: target {target} matches {len(matched)} resources")
    for operation in operations:
        apply_operation(matched[0], operation)


def _tokens(pointer: str) -> list[str]:
    if not pointer.startswith("/"):
        raise KustomizeError(f"not a JSON pointer: {pointer!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def apply_operation(document: Document, operation: Mapping[str, Any]) -> None:
    """One RFC 6902 operation (add, replace, remove, test), in place."""
    op = operation["op"]
    *parents, last = _tokens(operation["path"])
    node: Any = document
    for token in parents:
        node = node[int(token)] if isinstance(node, list) else node[token]
    if op == "test":
        current = node[int(last)] if isinstance(node, list) else node[last]
        if current != operation["value"]:
            raise KustomizeError(f"test failed at {operation['path']}")
    elif op == "remove":
        del node[int(last) if isinstance(node, list) else last]
    elif op in ("add", "replace"):
        value = copy.deepcopy(operation["value"])
        if isinstance(node, list):
            if last == "-":
                node.append(value)
            elif op == "add":
                node.insert(int(last), value)
            else:
                node[int(last)] = value
        else:
            if op == "replace" and last not in node:
                raise KustomizeError(f"replace of a missing member {operation['path']}")
            node[last] = value
    else:
        raise KustomizeError(f"unsupported patch operation {op!r}")
