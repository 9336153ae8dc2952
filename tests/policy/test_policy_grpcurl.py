"""The README's grpcurl example of provider preferences, run as written (JSON through
reflection, the enums by name)."""

from __future__ import annotations

import json

from tests.api.test_grpcurl import SERVICE, grpcurl
from tests.harness import ALPHA_KEY, start_gateway
from tests.policy.support import sent_provider

REQUEST = {
    "model": "meta-llama/llama-3.1-8b-instruct",
    "messages": [{"role": "ROLE_USER", "content": "Hi"}],
    "provider": {
        "data_collection": "DATA_COLLECTION_DENY",
        "sort": "PROVIDER_SORT_PRICE",
        "max_price": {"prompt": "0.02", "completion": "0.03"},
    },
}


async def test_the_readme_provider_example() -> None:
    async with start_gateway() as gw:
        done = await grpcurl(
            gw.server.address, f"{SERVICE}/Complete", data=json.dumps(REQUEST), key=ALPHA_KEY
        )
        assert done.returncode == 0, done.stderr
        reply = json.loads(done.stdout)
        # Chutes is cheapest but collects data: the cheapest of the others serves.
        assert reply["provider"] == "DeepInfra"
        assert sent_provider(gw.sim) == {
            "sort": "price",
            "max_price": {"prompt": 0.02, "completion": 0.03},
            "data_collection": "deny",
        }
