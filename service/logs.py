"""Structured JSON log lines. Only whitelisted fields are written: never prompts or keys."""

from __future__ import annotations

import logging
import sys
import time

import orjson

# Fields a log call may attach with ``extra=``; anything else is dropped, so a careless
# ``extra={"messages": ...}`` cannot leak prompt text into the logs.
ALLOWED_FIELDS = frozenset(
    {
        "request_id",
        "trace_id",
        "span_id",
        "caller_id",
        "rpc",
        "model",
        "served_model",
        "provider",
        "status",
        "reason",
        "latency_ms",
        "ttft_ms",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
        "retries",
        "attempt",
        "upstream_status",
        "generation_id",
    }
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ALLOWED_FIELDS.intersection(record.__dict__):
            line[key] = record.__dict__[key]
        if record.exc_info and record.exc_info[0] is not None:
            # The exception type and where it was raised, not its message: messages of
            # third-party exceptions can quote request data.
            exc_type, _, tb = record.exc_info
            frames = []
            while tb is not None:
                frames.append(f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}")
                tb = tb.tb_next
            line["exc_type"] = exc_type.__name__
            line["exc_at"] = frames[-3:]
        return orjson.dumps(line, default=str).decode()


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
