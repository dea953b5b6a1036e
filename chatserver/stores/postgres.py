"""The PostgreSQL engine, for several server processes (on one host or many) sharing one database
(README "Scaling out"): a writer connection fed by the group commit (groupcommit.py), a small
pool for reads, and the blocks mirror (pgblocks.py). docs/storage.md says how it works and what
deletion does and does not remove on PostgreSQL.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import asyncpg

from ..config import Config
from ..protocol import now_micros
from . import migrate
from .base import (
    Ack,
    AttachmentRefused,
    BackupUnsupported,
    Expired,
    GroupMessage,
    IntegrityError,
    NotMember,
    Stored,
    StoreError,
)
from .groupcommit import DEFAULT_SESSION_SECONDS, Runners, call_ops
from .pgblocks import CHANNEL_QUERY, CONNECTION_ERRORS, BlocksMirror, PgConnection
from .queries import (
    ATTACHMENT_COLUMNS,
    POSTGRES,
    AckPlan,
    PersonalWaiting,
    SqlStore,
    admit,
    claims,
    expired,
    mailbox_full,
    take_once,
    unsent,
)

log = logging.getLogger(__name__)

SCHEMA_PATH: Final = Path(__file__).resolve().parent.parent.parent / "schema-postgres.sql"
# Reads are short single queries; a few connections serve a process (each costs a backend).
POOL_SIZE: Final = 4
# The tables that hold message bodies: what scrub() vacuums.
MESSAGE_TABLES: Final = ("personal_messages, group_messages, room_messages, attachments,"
                         " attachment_chunks")
# One lock per schema: processes starting at once upgrade the schema one after the other.
_SCHEMA_LOCK: Final = ("SELECT pg_advisory_xact_lock("
                       "hashtext('chatserver schema ' || coalesce(current_schema(), '')))")
# One lock per schema for the account checks that must see other processes' accounts: is there
# any account yet (SPEC 10: the first is free and an admin), is another admin left.
_ACCOUNTS_LOCK: Final = ("SELECT pg_advisory_xact_lock("
                         "hashtext('chatserver accounts ' || coalesce(current_schema(), '')))")
# A failed VACUUM is tried again after this many seconds.
VACUUM_RETRY_SECONDS: Final = 1.0


def _columns(rows: list[Any], n: int) -> list[list[Any]]:
    """The first `n` fields of each row as `n` arrays, one per column (for unnest)."""
    return [[row[i] for row in rows] for i in range(n)]


def _count(status: str) -> int:
    """The row count of a command status such as "INSERT 0 1", "DELETE 3", "UPDATE 0"."""
    return int(status.rsplit(" ", 1)[1])


def _wrap(error: BaseException) -> BaseException:
    """What a caller gets for a failed operation: StoreError & co as they are, the driver's
    errors as IntegrityError (a constraint) or StoreError, with the cause attached."""
    if isinstance(error, StoreError) or not isinstance(error, Exception):
        return error
    constraint = isinstance(error, asyncpg.IntegrityConstraintViolationError)
    wrapped = (IntegrityError if constraint else StoreError)(f"{type(error).__name__}: {error}")
    wrapped.__cause__ = error
    return wrapped


# Messages waiting for each phone (SPEC 10), counted on the indexes (msg_to, id) and
# (phone, message_id) and only up to the limit $2: a full mailbox costs at most `limit` index
# entries per batch, a usual one (a few waiting) next to nothing. Another process may commit
# messages for the same phone meanwhile (READ COMMITTED): the limit can be passed by what the
# processes commit at the same moment, never by more. A personal message its recipient
# acknowledged on a device (SPEC 7.1) no longer waits for them, though a copy or another device
# may keep it stored.
_WAITING: Final = """
    SELECT r.phone,
        (SELECT count(*) FROM (SELECT 1 FROM personal_messages
                               WHERE msg_to = r.phone AND NOT acked LIMIT $2) AS a)
      + (SELECT count(*) FROM (SELECT 1 FROM group_pending WHERE phone = r.phone LIMIT $2) AS b)
    FROM unnest($1::text[]) AS r(phone)"""


async def _waiting(db: PgConnection, phones: set[str], limit: int) -> dict[str, int]:
    """How many messages wait for each of `phones`, counted up to `limit`."""
    return {r[0]: r[1] for r in await db.fetch(_WAITING, sorted(phones), limit)}


# accepted_us ($6) is the batch's time, one value for the whole batch (SPEC 10 retention); the
# column's default would do, but both engines take it from the server's clock the same way.
_INSERT_PERSONAL: Final = """
    INSERT INTO personal_messages (msg_from, msg_to, sent_us, sent_timestamp, message, accepted_us,
                                   ref)
    SELECT msg_from, msg_to, sent_us, sent_timestamp, message, $6, ref
    FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $7::text[])
         WITH ORDINALITY AS j(msg_from, msg_to, sent_us, sent_timestamp, message, ref, n)
    ORDER BY n
    ON CONFLICT DO NOTHING
    RETURNING msg_from, msg_to, sent_us, id"""
# SPEC 7.1: a new message waits for each live device of its recipient; SPEC 7.2: and, as a copy,
# for each live device of its sender but the one that sent it ($2, '' for none). A statement of
# its own after the INSERT: its snapshot sees a session another process committed while the
# INSERT waited for the recipient's row (add_session's lock, _lock_user). Returns the copies.
_DELIVER_PERSONAL: Final = """
    WITH j AS (SELECT * FROM unnest($1::bigint[], $2::text[]) AS j(id, device)),
    recipients AS (
        INSERT INTO personal_deliveries (sid_hash, message_id)
        SELECT s.sid_hash, p.id FROM j JOIN personal_messages AS p ON p.id = j.id
        JOIN sessions AS s ON s.phone = p.msg_to
        WHERE s.last_used_us > $3 OR s.kind = 'token'
        ORDER BY 2, 1
        ON CONFLICT DO NOTHING)
    INSERT INTO personal_deliveries (sid_hash, message_id)
    SELECT s.sid_hash, p.id FROM j JOIN personal_messages AS p ON p.id = j.id
    JOIN sessions AS s ON s.phone = p.msg_from AND s.sid_hash <> j.device
    WHERE (s.last_used_us > $3 OR s.kind = 'token') AND p.msg_from <> p.msg_to
    ORDER BY 2, 1
    ON CONFLICT DO NOTHING
    RETURNING message_id"""


# SPEC 13: a delete_of deletes its original ($1, $2, $3: msg_to, msg_from, sent_us of each,
# queries.unsent) with its deliveries and attachments (ON DELETE CASCADE); one that is gone
# already (acknowledged, expired, unsent before) is no matter. In id order: two processes
# deleting the same rows lock them in the same order.
_UNSEND_PERSONAL: Final = """
    DELETE FROM personal_messages WHERE id IN (
        SELECT p.id FROM unnest($1::text[], $2::text[], $3::bigint[]) AS j(msg_to, msg_from, sent_us)
        JOIN personal_messages AS p
        ON p.msg_to = j.msg_to AND p.msg_from = j.msg_from AND p.sent_us = j.sent_us
        ORDER BY p.id FOR UPDATE OF p)"""


# SPEC 8: new messages claim their attachments ([message id, attachment id, position, owner]
# rows): only the owner's, complete, claimed by no message yet. A claim by another process at the
# same moment holds the row: this one then re-reads it claimed and takes nothing.
_CLAIM: Final = """
    UPDATE attachments AS a SET {column} = j.message_id, position = j.position
    FROM unnest($1::bigint[], $2::text[], $3::int[], $4::text[]) AS j(message_id, id, position, owner)
    WHERE a.id = j.id AND a.owner = j.owner AND a.complete
      AND a.personal_id IS NULL AND a.group_id IS NULL AND a.room_id IS NULL
    RETURNING a.id"""


async def _claim_attachments(db: PgConnection, column: str, rows: list[list[Any]]) -> None:
    """Claim attachments for new messages in `column` (personal_id, group_id, room_id). Raises
    AttachmentRefused when one of them cannot be claimed (failing the batch: _commit then runs
    each write alone, so that only the message at fault fails)."""
    if rows and len(await db.fetch(_CLAIM.format(column=column), *_columns(rows, 4))) != len(rows):
        raise AttachmentRefused("an attachment is unknown, not yours, not uploaded completely"
                                " or attached to another message")


async def _add_personal_many(db: PgConnection, rows: list[Any]) -> list[Stored | None | StoreError]:
    """Insert [msg_from, msg_to, sent_us, sent_timestamp, message, max_waiting, device,
    live_after_us, attachments, ref, unsent] rows in array order (which is the acceptance order,
    `id`), a delete_of deleting its original (SPEC 13), each waiting for its recipient's devices
    and, as copies, its sender's other devices (SPEC 7); Stored for each row stored, None for a
    repeated identity, MailboxFull for a row whose recipient already has max_waiting messages
    waiting. The dialogues are opened by the table's trigger."""
    limit = rows[0][5]
    admitted = admit((row[1] for row in rows), await _waiting(db, {row[1] for row in rows}, limit),
                     limit)
    taken = [row for row, ok in zip(rows, admitted, strict=True) if ok]
    inserted: dict[tuple[Any, ...], int] = {}
    copies: Counter[int] = Counter()
    if taken:
        inserted = {(r[0], r[1], r[2]): r[3] for r in await db.fetch(
            _INSERT_PERSONAL, *_columns(taken, 5), now_micros(), [row[9] for row in taken])}
    if inserted:
        devices = {(row[0], row[1], row[2]): row[6] or "" for row in rows}
        await _claim_attachments(db, "personal_id", claims(rows, inserted, owner=0, attachments=8))
        copies = Counter(r[0] for r in await db.fetch(
            _DELIVER_PERSONAL, list(inserted.values()), [devices[k] for k in inserted], rows[0][7]))
        originals = unsent(rows, inserted, 1, 0)
        if originals:  # after the deliveries: an original of this same batch goes too
            await db.execute(_UNSEND_PERSONAL, *_columns(originals, 3))
    results: list[Stored | None | StoreError] = []
    for row, ok in zip(rows, admitted, strict=True):
        if ok:
            # the same identity twice in one batch: only the first is new
            message_id = inserted.pop((row[0], row[1], row[2]), None)
            results.append(None if message_id is None else Stored([row[1]], copies[message_id]))
        elif await db.fetchval(POSTGRES.is_stored, row[1], row[0], row[2]) is not None:
            results.append(None)  # a retry of a message stored before the mailbox filled up
        else:
            results.append(mailbox_full())
    return results


# For each acknowledgement [msg_from, msg_to, sent_us, device] (n: its place) whose message waits
# for the device: its id, whether the recipient acknowledged it already (on another device), and
# whether another device waits for it. {to}/{fro} = msg_to/msg_from: msg_from's message to msg_to;
# swapped: msg_to's own message to msg_from (a copy, SPEC 7.2), asked only when needed.
_PERSONAL_WAITING: Final = """
    SELECT j.n, p.id, p.acked,
        EXISTS (SELECT 1 FROM personal_deliveries AS o
                WHERE o.message_id = p.id AND o.sid_hash <> j.device)
    FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[])
         WITH ORDINALITY AS j(msg_from, msg_to, sent_us, device, n)
    JOIN personal_messages AS p ON p.msg_to = j.{to} AND p.msg_from = j.{fro} AND p.sent_us = j.sent_us
    JOIN personal_deliveries AS d ON d.message_id = p.id AND d.sid_hash = j.device"""
_PEER_WAITING: Final = _PERSONAL_WAITING.format(to="msg_to", fro="msg_from")
_COPY_WAITING: Final = _PERSONAL_WAITING.format(to="msg_from", fro="msg_to")
# Messages whose last waiting device acknowledges them, when the recipient has (now or before):
# deleted at once, with that device's row (ON DELETE CASCADE).
_DELETE_PERSONAL: Final = "DELETE FROM personal_messages WHERE id = ANY($1::bigint[]) RETURNING id"
# The recipient's first acknowledgement (on any device) of each message id; the row lock makes
# two devices acknowledging in two processes at once take turns: the second sees `acked`.
_ACKED: Final = """
    UPDATE personal_messages SET acked = true
    WHERE id = ANY($1::bigint[]) AND NOT acked
    RETURNING id"""
# last_received_receiver of each dialogue: the receipt of its latest first acknowledgement in the
# batch (an upsert touches a row once: DISTINCT ON).
_SET_RECEIVED: Final = """
    INSERT INTO dialogues (msg_from, msg_to, last_received_receiver)
    SELECT DISTINCT ON (msg_from, msg_to) msg_from, msg_to, received_at
    FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS j(msg_from, msg_to, received_at, n)
    ORDER BY msg_from, msg_to, n DESC
    ON CONFLICT (msg_from, msg_to)
    DO UPDATE SET last_received_receiver = excluded.last_received_receiver"""
# The devices stop waiting; trigger personal_deliveries_last deletes a message once acknowledged
# with no device waiting.
_UNDELIVER_PERSONAL: Final = """
    DELETE FROM personal_deliveries AS d
    USING unnest($1::text[], $2::bigint[]) AS j(sid_hash, message_id)
    WHERE d.sid_hash = j.sid_hash AND d.message_id = j.message_id"""


async def _ack_personal_many(db: PgConnection, rows: list[Any]) -> list[Ack]:
    """Acknowledgements [msg_from, msg_to, sent_us, received_at, device] (SPEC 7.1, 7.2); for
    each, Ack.FIRST when msg_to's first device acknowledged msg_from's message (its dialogue then
    gets last_received_receiver = received_at), Ack.LATER for a later device or a copy,
    Ack.MISSING when nothing with that identity waited for the device. What each does: AckPlan."""
    args = (*_columns(rows, 3), [row[4] for row in rows])
    plan = AckPlan(rows, {r[0] - 1: PersonalWaiting(r[1], r[2], r[3], False)
                          for r in await db.fetch(_PEER_WAITING, *args)})
    if plan.copies_wanted:
        plan.add_copies({r[0] - 1: PersonalWaiting(r[1], r[2], r[3], True)
                         for r in await db.fetch(_COPY_WAITING, *args)})
    plan.plan()
    marked: set[int] = set()
    if plan.mark:
        marked = {r[0] for r in await db.fetch(_ACKED, plan.mark)}
    if plan.undeliver:
        await db.execute(_UNDELIVER_PERSONAL, [u[0] for u in plan.undeliver],
                         [u[1] for u in plan.undeliver])
    deleted: set[int] = set()
    if plan.delete:
        deleted = {r[0] for r in await db.fetch(_DELETE_PERSONAL, sorted(plan.delete))}
    results, receipts = plan.results(marked, deleted)
    if receipts:
        await db.execute(_SET_RECEIVED, [r[0] for r in receipts], [r[1] for r in receipts],
                         [r[3] for r in receipts])
    return results


_SET_SEEN: Final = """
    INSERT INTO dialogues (msg_from, msg_to, last_seen_receiver)
    SELECT DISTINCT ON (msg_from, msg_to) msg_from, msg_to, seen_at
    FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS j(msg_from, msg_to, seen_at, n)
    ORDER BY msg_from, msg_to, n DESC
    ON CONFLICT (msg_from, msg_to) DO UPDATE SET last_seen_receiver = excluded.last_seen_receiver"""


async def _read_personal_many(db: PgConnection, rows: list[Any]) -> list[None]:
    """Set last_seen_receiver for rows [msg_from, msg_to, seen_at] (the last one per dialogue wins)."""
    await db.execute(_SET_SEEN, *_columns(rows, 3))
    return [None] * len(rows)


# The messages, and for each the members it is for (all but the sender, sorted) with how many
# messages wait for each of them (as _WAITING), in one statement. The members are locked (FOR KEY
# SHARE): a member removed by another process at the same moment is then either removed before
# this reads the members (and not pending) or after this commits (and dropped from the pending
# list by the trigger group_members_left); without the lock the message could wait for them
# forever. accepted_us ($6): as for personal messages.
_INSERT_GROUP: Final = """
    WITH j AS (
        SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                             $8::text[])
                      WITH ORDINALITY AS j(grp, msg_from, sent_us, sent_timestamp, message, ref, n)),
    inserted AS (
        INSERT INTO group_messages (grp, msg_from, sent_us, sent_timestamp, message, accepted_us,
                                    ref)
        SELECT grp, msg_from, sent_us, sent_timestamp, message, $6, ref FROM j
        WHERE EXISTS (SELECT 1 FROM group_members AS s WHERE s.grp = j.grp AND s.phone = j.msg_from)
        ORDER BY n
        ON CONFLICT DO NOTHING
        RETURNING id, grp, msg_from, sent_us),
    pairs AS (
        SELECT i.id, m.phone FROM inserted AS i
        JOIN group_members AS m ON m.grp = i.grp AND m.phone <> i.msg_from
        ORDER BY i.id, m.phone
        FOR KEY SHARE OF m),
    waiting AS (
        SELECT d.phone,
            (SELECT count(*) FROM (SELECT 1 FROM personal_messages
                                   WHERE msg_to = d.phone AND NOT acked LIMIT $7) AS a)
          + (SELECT count(*) FROM (SELECT 1 FROM group_pending WHERE phone = d.phone LIMIT $7) AS b)
            AS n
        FROM (SELECT DISTINCT phone FROM pairs) AS d)
    SELECT i.grp, i.msg_from, i.sent_us, i.id,
           coalesce((SELECT array_agg(p.phone ORDER BY p.phone) FROM pairs AS p
                     WHERE p.id = i.id), '{}'),
           coalesce((SELECT array_agg(w.n ORDER BY p.phone) FROM pairs AS p
                     JOIN waiting AS w USING (phone) WHERE p.id = i.id), '{}')
    FROM inserted AS i ORDER BY i.id"""
_INSERT_PENDING: Final = """
    INSERT INTO group_pending (phone, message_id)
    SELECT * FROM unnest($1::text[], $2::bigint[]) ORDER BY 2, 1"""
# SPEC 7.1: each live device of each pending recipient ($1, $2: phone, message id) waits for it;
# SPEC 7.2: and, as a copy, each live device of the sender but the sending one ($3, $4: message
# id, device or ''). Its own statement after _INSERT_GROUP, as _DELIVER_PERSONAL. Returns the copies.
_DELIVER_GROUP: Final = """
    WITH recipients AS (
        INSERT INTO group_deliveries (sid_hash, message_id)
        SELECT s.sid_hash, j.message_id FROM unnest($1::text[], $2::bigint[]) AS j(phone, message_id)
        JOIN sessions AS s ON s.phone = j.phone
        WHERE s.last_used_us > $5 OR s.kind = 'token'
        ORDER BY 2, 1
        ON CONFLICT DO NOTHING)
    INSERT INTO group_deliveries (sid_hash, message_id)
    SELECT s.sid_hash, m.id FROM unnest($3::bigint[], $4::text[]) AS j(id, device)
    JOIN group_messages AS m ON m.id = j.id
    JOIN sessions AS s ON s.phone = m.msg_from AND s.sid_hash <> j.device
    WHERE s.last_used_us > $5 OR s.kind = 'token'
    ORDER BY 2, 1
    ON CONFLICT DO NOTHING
    RETURNING message_id"""
_DELETE_UNADDRESSED: Final = "DELETE FROM group_messages WHERE id = ANY($1::bigint[])"
# SPEC 13: a delete_of deletes its original ($1, $2, $3: grp, msg_from, sent_us) with its pending
# rows, deliveries and attachments (ON DELETE CASCADE), as _UNSEND_PERSONAL.
_UNSEND_GROUP: Final = """
    DELETE FROM group_messages WHERE id IN (
        SELECT m.id FROM unnest($1::text[], $2::text[], $3::bigint[]) AS j(grp, msg_from, sent_us)
        JOIN group_messages AS m ON m.grp = j.grp AND m.msg_from = j.msg_from AND m.sent_us = j.sent_us
        ORDER BY m.id FOR UPDATE OF m)"""


async def _add_group_many(db: PgConnection, rows: list[Any]) -> list[Stored | None | StoreError]:
    """Insert [grp, msg_from, sent_us, sent_timestamp, message, max_waiting, device,
    live_after_us, attachments, ref, unsent] rows (a delete_of deleting its original, SPEC 13),
    each waiting for its recipients' devices and, as copies, its sender's
    other devices (SPEC 7). For each row: Stored, with the phones it is pending for (may be
    empty in a group of one; members whose mailbox is full are left out), None for a repeated
    identity, or MailboxFull when every other member's mailbox is full (then nothing is kept).
    Raises NotMember (failing only that write) when msg_from is not in the group."""
    limit = rows[0][5]
    inserted = await db.fetch(_INSERT_GROUP, *_columns(rows, 5), now_micros(), limit,
                              [row[9] for row in rows])
    waiting: dict[str, int] = {}
    for r in inserted:
        waiting.update(zip(r[4], r[5], strict=True))  # counted before this batch
    devices = {(row[0], row[1], row[2]): row[6] or "" for row in rows}
    pending: dict[tuple[Any, ...], list[str]] = {}
    full: set[int] = set()
    taken: tuple[list[str], list[int]] = ([], [])
    senders: tuple[list[int], list[str]] = ([], [])
    for r in inserted:  # in id order: the earlier message takes the last places in a mailbox
        phones = [p for p, ok in zip(r[4], admit(r[4], waiting, limit), strict=True) if ok]
        taken[0].extend(phones)
        taken[1].extend([r[3]] * len(phones))
        pending[(r[0], r[1], r[2])] = phones
        if r[4] and not phones:
            full.add(r[3])  # every recipient full: nothing is kept
        else:
            senders[0].append(r[3])
            senders[1].append(devices[(r[0], r[1], r[2])])
    if taken[0]:
        await db.execute(_INSERT_PENDING, *taken)
    copies: Counter[int] = Counter(r[0] for r in await db.fetch(
        _DELIVER_GROUP, *taken, *senders, rows[0][7])) if inserted else Counter()
    ids = {(r[0], r[1], r[2]): r[3] for r in inserted}
    await _claim_attachments(db, "group_id", claims(
        rows, {key: i for key, i in ids.items() if i not in full}, owner=1, attachments=8))
    # a group of one with no other device of the sender, or every recipient full
    unaddressed = [i for key, i in ids.items() if i in full or (not pending[key] and not copies[i])]
    if unaddressed:
        await db.execute(_DELETE_UNADDRESSED, unaddressed)
    originals = unsent(rows, [key for key, i in ids.items() if i not in full], 0, 1)
    if originals:
        await db.execute(_UNSEND_GROUP, *_columns(originals, 3))
    results: list[Stored | None | StoreError] = []
    for row in rows:
        key = (row[0], row[1], row[2])
        message_id = ids.pop(key, None)
        if message_id is not None:
            results.append(mailbox_full() if message_id in full
                           else Stored(pending[key], copies[message_id]))
        elif await db.fetchval(POSTGRES.is_member, row[0], row[1]) is None:
            # In a batch of several, _commit then runs every write alone: only this one fails.
            raise NotMember(f"{row[1]} is not a participant of {row[0]}")
        else:
            results.append(None)
    return results


# For each acknowledgement [grp, msg_from, sent_us, phone, device] (n: its place): the message's
# id when it waits for the device.
_GROUP_WAITING: Final = """
    SELECT j.n, m.id
    FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[])
         WITH ORDINALITY AS j(grp, msg_from, sent_us, device, n)
    JOIN group_messages AS m ON m.grp = j.grp AND m.msg_from = j.msg_from AND m.sent_us = j.sent_us
    JOIN group_deliveries AS d ON d.message_id = m.id AND d.sid_hash = j.device"""
# The first device of each phone takes it off the pending list (the last pending row and the
# last device row delete the message: triggers group_pending_last, group_deliveries_last).
_DELETE_PENDING: Final = """
    DELETE FROM group_pending AS p USING unnest($1::text[], $2::bigint[]) AS j(phone, message_id)
    WHERE p.phone = j.phone AND p.message_id = j.message_id
    RETURNING p.phone, p.message_id"""
_UNDELIVER_GROUP: Final = """
    DELETE FROM group_deliveries AS d
    USING unnest($1::text[], $2::bigint[]) AS j(sid_hash, message_id)
    WHERE d.sid_hash = j.sid_hash AND d.message_id = j.message_id"""


async def _ack_group_many(db: PgConnection, rows: list[Any]) -> list[Ack]:
    """Acknowledgements [grp, msg_from, sent_us, phone, device] (SPEC 7.1): for each, Ack.FIRST
    when it took `phone` off the pending list, Ack.LATER for a later device of `phone` or a copy,
    Ack.MISSING when the message did not wait for the device."""
    found = {r[0] - 1: r[1] for r in await db.fetch(
        _GROUP_WAITING, *_columns(rows, 3), [row[4] for row in rows])}
    claimed: set[tuple[str, int]] = set()
    ids = [take_once((found.get(k),), row[4], claimed) for k, row in enumerate(rows)]
    acked = [(row, i) for row, i in zip(rows, ids, strict=True) if i is not None]
    removed: set[tuple[Any, ...]] = set()
    if acked:
        wanted = sorted({(row[3], i) for row, i in acked}, key=lambda p: (p[1], p[0]))
        removed = {tuple(r) for r in await db.fetch(
            _DELETE_PENDING, [w[0] for w in wanted], [w[1] for w in wanted])}
        gone = sorted((row[4], i) for row, i in acked)
        await db.execute(_UNDELIVER_GROUP, [g[0] for g in gone], [g[1] for g in gone])
    results = []
    for row, message_id in zip(rows, ids, strict=True):
        key = (row[3], message_id)
        if message_id is None:
            results.append(Ack.MISSING)
        elif key in removed:
            removed.discard(key)
            results.append(Ack.FIRST)
        else:
            results.append(Ack.LATER)
    return results


_SET_GROUP_READ: Final = """
    UPDATE group_members AS g SET last_read = greatest(coalesce(g.last_read, ''), j.up_to)
    FROM (SELECT grp, phone, max(up_to COLLATE "C") AS up_to
          FROM unnest($1::text[], $2::text[], $3::text[]) AS u(grp, phone, up_to)
          GROUP BY grp, phone) AS j
    WHERE g.grp = j.grp AND g.phone = j.phone"""


async def _read_group_many(db: PgConnection, rows: list[Any]) -> list[None]:
    """Move the read position of [grp, phone, read_up_to] forward (never back)."""
    await db.execute(_SET_GROUP_READ, *_columns(rows, 3))
    return [None] * len(rows)


_INSERT_ROOM: Final = """
    INSERT INTO room_messages (room, msg_from, sent_us, sent_timestamp, message, ref)
    SELECT room, msg_from, sent_us, sent_timestamp, message, ref
    FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[])
         WITH ORDINALITY AS j(room, msg_from, sent_us, sent_timestamp, message, ref, n)
    ORDER BY n
    ON CONFLICT DO NOTHING
    RETURNING room, msg_from, sent_us, id"""
# Per room, the id of the newest message beyond `keep` (index room_messages_room), and everything
# up to it goes.
_TRIM_ROOMS: Final = """
    DELETE FROM room_messages AS m USING (
        SELECT r.room, (SELECT id FROM room_messages WHERE room = r.room
                        ORDER BY id DESC OFFSET $2 LIMIT 1) AS cut
        FROM unnest($1::text[]) AS r(room)) AS c
    WHERE m.room = c.room AND m.id <= c.cut"""
# SPEC 13: a delete_of deletes its original ($1, $2, $3: room, msg_from, sent_us) with its
# attachments.
_UNSEND_ROOM: Final = """
    DELETE FROM room_messages WHERE id IN (
        SELECT m.id FROM unnest($1::text[], $2::text[], $3::bigint[]) AS j(room, msg_from, sent_us)
        JOIN room_messages AS m ON m.room = j.room AND m.msg_from = j.msg_from AND m.sent_us = j.sent_us
        ORDER BY m.id FOR UPDATE OF m)"""


async def _add_room_many(db: PgConnection, rows: list[Any]) -> list[int | None]:
    """Append [room, msg_from, sent_us, sent_timestamp, message, keep, attachments, ref, unsent]
    rows to room histories (each claiming its attachments, a delete_of deleting its original)
    and drop what falls beyond `keep`; for each row its id (the room's order), or None for a
    repeated identity."""
    inserted = {(r[0], r[1], r[2]): r[3] for r in await db.fetch(
        _INSERT_ROOM, *_columns(rows, 5), [row[7] for row in rows])}
    await _claim_attachments(db, "room_id", claims(rows, inserted, owner=1, attachments=6))
    originals = unsent(rows, inserted, 0, 1)
    if originals:
        await db.execute(_UNSEND_ROOM, *_columns(originals, 3))
    await db.execute(_TRIM_ROOMS, sorted({row[0] for row in rows}), rows[0][5])
    return [inserted.pop((row[0], row[1], row[2]), None) for row in rows]



# Retention (SPEC 10): the oldest first, on the index of accepted_us (migration 0002). Several
# processes run it: SKIP LOCKED leaves a row another one is deleting (or acknowledging) to that
# transaction, and a row is returned only by the DELETE that removed it, so each expired message
# is told to its sender once. The last field: every recipient had acknowledged it (SPEC 7.1),
# read before the delete (group_pending rows go with their message).
_EXPIRE_PERSONAL: Final = """
    DELETE FROM personal_messages WHERE id IN (
        SELECT id FROM personal_messages WHERE accepted_us < $1 ORDER BY accepted_us LIMIT $2
        FOR UPDATE SKIP LOCKED)
    RETURNING msg_from, msg_to, sent_timestamp, sent_us, accepted_us, id, acked"""
_EXPIRE_GROUP: Final = """
    WITH doomed AS (
        SELECT id FROM group_messages WHERE accepted_us < $1 ORDER BY accepted_us LIMIT $2
        FOR UPDATE SKIP LOCKED),
    flagged AS (
        SELECT d.id, NOT EXISTS (SELECT 1 FROM group_pending AS p WHERE p.message_id = d.id)
            AS delivered
        FROM doomed AS d)
    DELETE FROM group_messages AS m USING flagged AS f WHERE m.id = f.id
    RETURNING m.msg_from, m.grp, m.sent_timestamp, m.sent_us, m.accepted_us, m.id, f.delivered"""


async def _synchronous_commit(writer: PgConnection) -> None:
    # SPEC 6: an acknowledged message must survive a crash. "off" would acknowledge commits that
    # are not flushed yet; every other setting waits for the local flush.
    if await writer.fetchval("SHOW synchronous_commit") == "off":
        await writer.execute("SET synchronous_commit = on")


class PgStore(SqlStore[PgConnection]):
    """All persistent state, in PostgreSQL. Open with `await PgStore.open(url)` (or
    `connect(config)`), close with `await store.close()`."""

    SQL = POSTGRES
    LIVE_SESSIONS = ("SELECT s.sid_hash, s.last_used_us FROM sessions AS s JOIN users AS u"
                     " ON u.phone = s.phone WHERE s.sid_hash = ANY($1::text[])"
                     " AND (s.last_used_us > $2 OR s.kind = 'token')"
                     " AND NOT u.disabled")
    TOUCH_SESSIONS = ("UPDATE sessions SET last_used_us = $2 WHERE sid_hash = ANY($1::text[])"
                      " AND last_used_us < $3 AND (last_used_us > $4 OR kind = 'token')")
    ATTACHMENTS_TO_SEND = (f"SELECT {ATTACHMENT_COLUMNS} FROM attachments"
                           " WHERE id = ANY($1::text[]) AND owner = $2 AND complete"
                           " AND personal_id IS NULL AND group_id IS NULL AND room_id IS NULL")
    ATTACHMENTS_OF = (f"SELECT {{column}}, {ATTACHMENT_COLUMNS} FROM attachments"
                      " WHERE {column} = ANY($1::bigint[]) ORDER BY {column}, position")
    # SPEC 9: $3 the phones, $4 the conversations (one pair per position); subscribed devices
    # found by phone (push_subscriptions_phone), then their sessions by key.
    PUSH_TARGETS = ("SELECT s.sid_hash, s.phone, ps.endpoint, ps.p256dh, ps.auth, w.conversation"
                    " FROM unnest($3::text[], $4::text[]) WITH ORDINALITY AS w(phone, conversation, n)"
                    " JOIN push_subscriptions AS ps ON ps.phone = w.phone"
                    " JOIN sessions AS s ON s.sid_hash = ps.sid_hash"
                    "      AND (s.last_used_us > $2 OR s.kind = 'token')"
                    " JOIN users AS u ON u.phone = s.phone AND NOT u.disabled"
                    " WHERE NOT EXISTS (SELECT 1 FROM mutes AS m WHERE m.phone = w.phone"
                    "                   AND m.conversation = w.conversation AND m.until_us > $1)"
                    " ORDER BY w.n, s.sid_hash")
    SCHEMA = SCHEMA_PATH
    MIGRATIONS = migrate.MIGRATIONS_DIR / "postgres"
    RUNNERS = Runners(_add_personal_many, _ack_personal_many, _read_personal_many,
                      _add_group_many, _ack_group_many, _read_group_many, _add_room_many,
                      call_ops)

    def __init__(self, url: str, writer: PgConnection, pool: asyncpg.Pool, channel: str,
                 scrub_seconds: float, rooms_keep: int, max_waiting: int = 10000,
                 session_seconds: float = DEFAULT_SESSION_SECONDS) -> None:
        super().__init__(scrub_seconds, rooms_keep, max_waiting, session_seconds)
        self._url = url
        self._writer: PgConnection | None = writer  # None: lost, reconnected before the next batch
        self._pool = pool
        self._mirror = BlocksMirror(url, channel, self._blocks)

    @classmethod
    async def connect(cls, config: Config) -> PgStore:
        """The store at `[database] url`, with the config's settings."""
        return await cls.open(config.database.url, scrub_seconds=config.database.scrub_seconds,
                              rooms_keep=config.rooms.keep,
                              max_waiting=config.limits.max_waiting_per_recipient,
                              session_seconds=config.security.session_seconds)

    @classmethod
    async def open(cls, url: str, *, scrub_seconds: float = 5.0, rooms_keep: int = 1000,
                   max_waiting: int = 10000,
                   session_seconds: float = DEFAULT_SESSION_SECONDS) -> PgStore:
        """Connect to the database at `url`, bring its schema to this release's version
        (migrate.py) under an advisory lock per schema, so that processes starting at once do it
        one after the other; load the blocks and listen for their changes.

        Raises OSError when the server cannot be reached, SchemaTooNew for a database of a newer
        release, StoreError when it refuses the connection or an upgrade fails.
        """
        try:
            writer = await asyncpg.connect(url)
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            # e.g. an unknown role or database: one line for `run.py`, not a traceback
            raise StoreError(f"cannot use the PostgreSQL database: {e}") from e
        pool: asyncpg.Pool | None = None
        try:
            await cls._migrate(writer)
            await _synchronous_commit(writer)
            channel = await writer.fetchval(CHANNEL_QUERY)
            pool = await asyncpg.create_pool(url, min_size=1, max_size=POOL_SIZE)
            store = cls(url, writer, pool, channel, scrub_seconds, rooms_keep, max_waiting,
                        session_seconds)
            await store._mirror.listen()
        except BaseException as e:
            if pool is not None:
                await pool.close()
            await writer.close()
            if isinstance(e, asyncpg.PostgresError):
                raise _wrap(e) from e
            raise
        store._start("pgstore")
        return store

    @classmethod
    async def _migrate(cls, writer: PgConnection) -> None:
        """Bring the schema to this release's version in one transaction (migrate.py)."""
        async with writer.transaction():
            await writer.execute(_SCHEMA_LOCK)
            has_version = await writer.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
            has_users = await writer.fetchval("SELECT to_regclass('users') IS NOT NULL")
            where = await writer.fetchval("SELECT format('PostgreSQL schema %s', current_schema())")
            if has_version:
                version = await writer.fetchval(migrate.READ_VERSION)
            else:
                version = 1 if has_users else 0
            steps = migrate.plan(cls.SCHEMA, cls.MIGRATIONS, version, where)
            for _, script in steps:
                await writer.execute(script)
            if steps or not has_version:
                for statement in migrate.record(steps[-1][0] if steps else version):
                    await writer.execute(statement)

    @classmethod
    def backup(cls, config: Config, target: str | Path) -> str:
        """Refused: PostgreSQL has its own tools."""
        raise BackupUnsupported("backup copies the SQLite file; for a PostgreSQL [database] url "
                                "use pg_dump")

    # -- group commit hooks -------------------------------------------------------------------

    async def _connection(self) -> PgConnection:
        """The writer connection, made again when it was lost (a server restart, a network cut)."""
        if self._writer is None or self._writer.is_closed():
            self._writer = None
            writer = await asyncpg.connect(self._url)
            await _synchronous_commit(writer)
            self._writer = writer
        return self._writer

    async def _begin(self, db: PgConnection) -> None:
        await db.execute("BEGIN")

    async def _commit_transaction(self, db: PgConnection) -> None:
        await db.execute("COMMIT")

    async def _rollback(self, db: PgConnection | None) -> None:
        if db is None or db.is_closed():
            return
        try:
            await db.execute("ROLLBACK")
        except (*CONNECTION_ERRORS, asyncpg.PostgresError):
            # The connection is in an unknown state: drop it, the next batch makes a new one.
            log.warning("ROLLBACK failed; the writer connection is dropped")
            db.terminate()

    def _write_fault(self, error: Exception) -> bool:
        return (isinstance(error, (asyncpg.PostgresError, NotMember, AttachmentRefused))
                and not isinstance(error, CONNECTION_ERRORS))

    def _retryable(self, error: Exception) -> bool:
        return isinstance(error, asyncpg.TransactionRollbackError)

    def _wrap(self, error: BaseException) -> BaseException:
        return _wrap(error)

    async def _scrub_once(self) -> float | None:
        """VACUUM the message tables, on a pool connection: VACUUM cannot run in a transaction
        block, and it need not wait for the writer."""
        try:
            async with self._pool.acquire() as conn:
                await conn.execute(f"VACUUM {MESSAGE_TABLES}")
        except (*CONNECTION_ERRORS, asyncpg.PostgresError):
            log.exception("VACUUM of the message tables failed")
            return VACUUM_RETRY_SECONDS
        return None

    async def _close_connections(self) -> None:
        try:
            await self._mirror.close()
        finally:
            await self._pool.close()
            if self._writer is not None:
                await self._writer.close()

    # -- reads and writes of the shared queries (queries.py) ----------------------------------

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        try:
            return await self._pool.fetch(sql, *args)
        except (*CONNECTION_ERRORS, asyncpg.PostgresError) as e:
            raise _wrap(e) from e

    @staticmethod
    def _text_list(texts: list[Any]) -> list[Any]:
        return texts

    @staticmethod
    def _pairs(pairs: list[tuple[str, str]]) -> list[Any]:
        return [[p[0] for p in pairs], [p[1] for p in pairs]]

    @staticmethod
    async def _execute(db: PgConnection, sql: str, *args: Any) -> int:
        return _count(await db.execute(sql, *args))

    @staticmethod
    async def _execute_many(db: PgConnection, sql: str, rows: list[tuple[Any, ...]]) -> None:
        await db.executemany(sql, rows)

    @staticmethod
    async def _query(db: PgConnection, sql: str, *args: Any) -> list[Any]:
        return list(await db.fetch(sql, *args))

    async def _lock_accounts(self, db: PgConnection) -> None:
        # Held until the batch commits: another process's registration or admin change waits,
        # then sees this one's accounts (READ COMMITTED reads anew at each statement).
        await db.execute(_ACCOUNTS_LOCK)

    async def _database_bytes(self) -> int:
        return int((await self._fetch("SELECT pg_database_size(current_database())"))[0][0])

    # -- what PostgreSQL says in its own SQL --------------------------------------------------

    async def update_group(self, key: str, *, name: str | None = None, add: Sequence[str] = (),
                           remove: Sequence[str] = (), admins: Sequence[str] = ()) -> None:
        async def op(db: PgConnection) -> None:
            now = now_micros()
            # Two processes updating one group would each check "no admin left" or "no member
            # left" without seeing the other's change: the group's row makes them take turns
            # (NO KEY: new messages of the group, whose foreign key only shares it, need not wait).
            await db.execute("SELECT 1 FROM groups WHERE key = $1 FOR NO KEY UPDATE", key)
            if name is not None:
                await db.execute("UPDATE groups SET name = $1 WHERE key = $2", name, key)
            if add:
                await db.execute(
                    "INSERT INTO group_members (grp, phone, is_admin, joined_us)"
                    " SELECT $1, phone, false, $3 FROM unnest($2::text[]) AS p(phone)"
                    " ON CONFLICT DO NOTHING", key, list(add), now)
            if remove:
                await db.execute("DELETE FROM group_members WHERE grp = $1 AND phone = ANY($2::text[])",
                                 key, list(remove))
            if admins:
                await db.execute("UPDATE group_members SET is_admin = true"
                                 " WHERE grp = $1 AND phone = ANY($2::text[])", key, list(admins))
            await db.execute(POSTGRES.keep_an_admin, key)
            await db.execute(POSTGRES.drop_empty_group, key)
        await self._write(op, deletes=bool(remove))

    async def pending_group_page(self, device: str, after: int,
                                 limit: int) -> list[tuple[int, GroupMessage]]:
        # keyset pagination on group_deliveries' primary key (sid_hash, message_id)
        rows = await self._fetch(
            "SELECT m.id, m.grp, m.msg_from, m.message, m.sent_us,"
            " coalesce((SELECT array_agg(q.phone ORDER BY q.phone) FROM group_pending AS q"
            "  WHERE q.message_id = m.id), '{}'), m.ref"
            " FROM group_deliveries AS d JOIN group_messages AS m ON m.id = d.message_id"
            " WHERE d.sid_hash = $1 AND d.message_id > $2 ORDER BY d.message_id LIMIT $3",
            device, after, limit)
        attached = await self._attachments_of("group_id", [r[0] for r in rows])
        return [(r[0], GroupMessage(r[1], r[2], r[3], r[4], list(r[5]), attached.get(r[0], []), r[6]))
                for r in rows]

    async def _lock_owner(self, db: PgConnection, phone: str) -> None:
        await db.execute("SELECT 1 FROM users WHERE phone = $1 FOR NO KEY UPDATE", phone)

    async def expire(self, before_us: int, limit: int) -> list[Expired]:
        async def op(db: PgConnection) -> list[Expired]:
            personal = await db.fetch(_EXPIRE_PERSONAL, before_us, limit)
            # group_pending rows go with their message (ON DELETE CASCADE)
            group = await db.fetch(_EXPIRE_GROUP, before_us, limit)
            return expired(personal, False) + expired(group, True)
        result: list[Expired] = await self._write(op)
        if result:  # only then: an hourly check that found nothing costs no scrub
            self._scrub_soon()
        return result

    async def _lock_user(self, db: PgConnection, phone: str) -> None:
        # FOR UPDATE conflicts with the FOR KEY SHARE that a new personal message takes on its
        # recipient's row (its foreign key) and that a new group message takes on its
        # recipients' memberships (_INSERT_GROUP): whichever comes second waits for the first's
        # commit, then (READ COMMITTED: a new snapshot per statement) sees what it committed.
        await db.execute("SELECT 1 FROM users WHERE phone = $1 FOR UPDATE", phone)
        await db.execute("SELECT 1 FROM group_members WHERE phone = $1 ORDER BY grp FOR UPDATE", phone)

    async def pending_group_for(self, phone: str) -> list[GroupMessage]:
        rows = await self._fetch(
            "SELECT m.grp, m.msg_from, m.message, m.sent_us,"
            " (SELECT array_agg(q.phone ORDER BY q.phone) FROM group_pending AS q"
            "  WHERE q.message_id = m.id), m.ref"
            " FROM group_pending AS p JOIN group_messages AS m ON m.id = p.message_id"
            " WHERE p.phone = $1 ORDER BY m.id", phone)
        return [GroupMessage(r[0], r[1], r[2], r[3], list(r[4]), ref=r[5]) for r in rows]
