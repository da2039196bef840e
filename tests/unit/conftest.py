"""
Unit-tier fixtures: ``postgres_server`` (one real PostgreSQL per test session) and ``store_db``
(each store test on SQLite and on that PostgreSQL), from ``tests/support/postgres.py``. Defined
here once: a module that imported them would get a server of its own.
"""

from tests.support.postgres import postgres_server, store_db  # noqa: F401  pylint: disable=unused-import
