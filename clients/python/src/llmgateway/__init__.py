"""LLM Gateway's Python client: the generated contract in ``llmgateway.v1`` (from
``proto/llmgateway/v1`` by ``scripts/generate.sh``) and helpers in ``llmgateway.client``."""
