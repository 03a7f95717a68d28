"""Id sets (``id_set``, ``id_set_member``): the ``known`` and ``explored`` ids a job resumes
from (DS-3), uploaded once with ``POST /idsets`` and named by a job's spec (``ids.known``,
``ids.explored``).

An upload is one transaction: ``create_set``, ``add_members`` per chunk of lines (COPY), then
``finish_set``; only a complete set can be named by a job (``usable``). ``seed_job`` turns a
job's sets into visits when the job is created, a chunk of ids a statement, never the whole set
in memory.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from uuid import UUID

import asyncpg


async def create_set(conn: asyncpg.Connection) -> UUID:
    """A new, empty and incomplete set; returns its id."""
    set_id = uuid.uuid4()
    await conn.execute("INSERT INTO id_set (id) VALUES ($1)", set_id)
    return set_id


async def add_members(conn: asyncpg.Connection, set_id: UUID, idents: Sequence[str]) -> None:
    """Add these ids (checked by the caller: ``shared.ids.check_id``) to the set; duplicates
    are harmless (read back distinct)."""
    if idents:
        await conn.copy_records_to_table("id_set_member", columns=("set_id", "ident"),
                                         records=[(set_id, i) for i in idents])


async def finish_set(conn: asyncpg.Connection, set_id: UUID, count: int) -> None:
    """Mark the set complete with ``count`` lines read: a job may name it from now on."""
    await conn.execute("UPDATE id_set SET count = $2, complete = true WHERE id = $1",
                       set_id, count)


async def usable(conn: asyncpg.Connection, set_id: UUID) -> bool:
    """Whether the set exists and its upload completed."""
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT FROM id_set WHERE id = $1 AND complete)", set_id))
