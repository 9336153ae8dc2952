"""The README's architecture table names every module of the service, and only those: a new
module gets its line there, a removed one loses it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("api", "domain", "upstream", "ledger", "quotas", "telemetry")


def _table() -> dict[str, set[str]]:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Architecture\n") :]
    section = section[: section.index("\n## ", 1)]
    rows = re.findall(r"^\| `(service/[a-z_/]*)` \| (.+) \|$", section, flags=re.M)
    return {package.rstrip("/"): set(re.findall(r"`([a-z_]+)`", cells)) for package, cells in rows}


def _modules(folder: Path) -> set[str]:
    return {path.stem for path in folder.glob("*.py") if path.name != "__init__.py"}


def test_every_module_has_its_place_in_the_readme() -> None:
    table = _table()
    expected = {"service": _modules(ROOT / "service")}
    expected |= {f"service/{name}": _modules(ROOT / "service" / name) for name in PACKAGES}
    for package, modules in expected.items():
        listed = table.get(package, set())
        assert modules - listed == set(), f"README Architecture: add to {package}/"
        assert listed - modules == set(), f"README Architecture: no such module in {package}/"
    assert "service/simulator" in table
