"""The stores' fixtures, defined in test_store_contract.py (db_path, place, store, sqlite_store,
pg_store), offered from here to the other modules of tests/stores as well (pytest finds a
conftest's fixtures by name; a module importing them itself would shadow its own parameters)."""

from test_store_contract import db_path, pg_store, place, sqlite_store, store  # noqa: F401
