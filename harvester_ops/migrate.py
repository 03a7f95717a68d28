"""Runs the Alembic migrations in ``migrations/`` against a database URL."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import sqlalchemy.exc
from alembic import command
from alembic.config import Config

from shared.errors import DependencyUnavailable


def _script_location() -> str:
    spec = importlib.util.find_spec("migrations")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the migrations package is not installed")
    return str(Path(next(iter(spec.submodule_search_locations))))


def alembic_config(database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", _script_location())
    url = database_url.replace("postgres://", "postgresql://", 1)
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg2://" + url[len("postgresql://"):]
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrate up to ``revision``; DependencyUnavailable if PostgreSQL cannot be reached."""
    try:
        command.upgrade(alembic_config(database_url), revision)
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as e:
        if not e.connection_invalidated and e.statement is not None:
            raise  # a statement of a migration failed: a bug, with its traceback
        problem = str(e.orig or e).strip().splitlines()
        raise DependencyUnavailable("PostgreSQL", problem[0] if problem else type(e).__name__) \
            from None


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)
