"""Generated from proto/llmgateway/v1 by scripts/generate.sh; do not edit."""
