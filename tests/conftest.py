"""Fixtures shared by the whole suite."""

# Real PostgreSQL and Redis servers on loopback (postgres_server, postgres_dsn, redis_server,
# redis_url, redis_factory): see tests/servers.py.
pytest_plugins = ["tests.servers"]
