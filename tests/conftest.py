"""Fixtures shared by the whole suite."""

import os

# The suite forks helpers (initdb and postgres run as an unprivileged user, which rules out
# vfork) from a process whose gRPC threads may be busy with an earlier test's server. With
# gRPC's fork support on, its at-fork handlers then run in the child and break it
# ("epoll_wait error: Bad file descriptor", initdb exits non-zero). The children exec at once
# and use no gRPC state, so the handlers have nothing to protect: turn them off before grpc
# is imported.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

# Real PostgreSQL and Redis servers on loopback (postgres_server, postgres_dsn, redis_server,
# redis_url, redis_factory): see tests/servers.py.
pytest_plugins = ["tests.servers"]
