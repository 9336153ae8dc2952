"""``python -m service.policy_report CALLERS_FILE [CALLER_ID ...]``: each caller's effective
policy, as the gateway would enforce it, without starting the gateway.

For a security review, or before a reload: per caller, the policy id its ledger rows and log
lines will carry, every rule that binds with where it comes from (the caller's own section or
``[default_policy]``), the rules left open, and the ``provider`` object a request that sets
no preferences is sent upstream with. The file is checked exactly as at start-up: a mistake
is the same one line naming the caller and the key, with exit code 2.
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path
from typing import Any

from service.callers_file import load_callers
from service.config import ConfigError
from service.domain.callers import Caller
from service.domain.policy import Rule
from service.upstream.wire import provider_json

_USAGE = "usage: python -m service.policy_report CALLERS_FILE [CALLER_ID ...]"


def report(caller: Caller, default_rules: set[str], own_rules: set[str]) -> dict[str, Any]:
    """What ``caller``'s policy binds; ``default_rules`` / ``own_rules`` are the rules the
    ``[default_policy]`` and the caller's own section set."""
    policy = caller.policy
    rules = policy.rules()
    return {
        "caller_id": caller.id,
        "policy_id": policy.id,
        "allowed_models": list(caller.allowed_models),
        "rules": {
            name: {"value": value, "from": _source(name, default_rules, own_rules)}
            for name, value in rules.items()
        },
        "open": [rule.value for rule in Rule if rule.value not in rules],
        # What a request that leaves every preference open is sent (None: no provider object).
        "provider_sent_when_request_is_silent": provider_json(policy.silent) or None,
    }


def _source(rule: str, default_rules: set[str], own_rules: set[str]) -> str:
    if rule in own_rules and rule in default_rules and rule == Rule.MAX_PRICE:
        return "caller policy over default_policy"  # kind by kind
    return "caller policy" if rule in own_rules else "default_policy"


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(_USAGE, file=sys.stderr)
        return 0 if len(argv) >= 2 else 2
    path = Path(argv[1])
    wanted = argv[2:]
    try:
        callers = load_callers(path)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    # Valid, so the raw TOML is what was checked: it tells which section set each rule.
    raw = tomllib.loads(path.read_text("utf-8"))
    default_rules = set(raw.get("default_policy", {}))
    own = {entry["id"]: set(entry.get("policy", {})) for entry in raw.get("callers", [])}
    known = {caller.id for caller in callers}
    missing = [caller_id for caller_id in wanted if caller_id not in known]
    if missing:
        print(f"{path}: no caller {', '.join(map(repr, missing))}", file=sys.stderr)
        return 2
    for caller in callers:
        if not wanted or caller.id in wanted:
            print(json.dumps(report(caller, default_rules, own[caller.id]), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
