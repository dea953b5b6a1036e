"""The SQLite engine: one WAL-mode file, a writer connection fed by the group commit
(groupcommit.py) and a query-only reader, which in WAL mode sees only committed data and never
waits for the writer. docs/storage.md says why each choice was made.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

import aiosqlite
import orjson

from ..config import Config
from ..protocol import now_micros
from . import migrate
from .base import (
    Ack,
    AttachmentRefused,
    CorruptDatabase,
    Expired,
    GroupMessage,
    IntegrityError,
    NotMember,
    Stored,
    StoreError,
)
from .groupcommit import DEFAULT_SESSION_SECONDS, Runners, call_ops
from .queries import (
    ATTACHMENT_COLUMNS,
    SQLITE,
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
from .queries import (
    identity_counts as _identity_counts,
)

log = logging.getLogger(__name__)

SCHEMA_PATH: Final = Path(__file__).resolve().parent.parent.parent / "schema.sql"
# A busy WAL checkpoint (a reader in the middle of a query holds old frames) is tried again after
# this many seconds.
CHECKPOINT_RETRY_SECONDS: Final = 0.1
# The database, its -wal/-shm and backups hold every waiting message and every password hash: owner
# only, whatever the umask (0644 under the usual 022). The folder the server creates: the same.
FILE_MODE: Final = 0o600
FOLDER_MODE: Final = 0o700
# Beside the database: SQLite's write-ahead log and shared memory, and auth.py's cookie secret.
_COMPANIONS: Final = ("-wal", "-shm", "-journal", ".secret")


def _create_private(path: Path) -> None:
    """Create the empty file `path` with FILE_MODE (SQLite takes an empty file for a new database,
    and makes its -wal and -shm with the main file's mode). Raises FileExistsError when it exists."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))


def make_private(path: str | Path) -> None:
    """Create the database's folder (FOLDER_MODE) and file (FILE_MODE) if missing, and tighten the
    modes of an existing deployment's files: the database, its -wal/-shm/-journal, the secret.

    The folder of an existing database is tightened only when everything in it belongs to the
    database (`var/` as the server made it): a database kept in a shared folder leaves it alone.
    Raises OSError when the folder or the file cannot be made.
    """
    path = Path(path)
    folder = path.parent
    if not folder.exists():
        folder.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
    elif folder.resolve() != Path.cwd().resolve() and all(
            p.name.startswith(path.name) for p in folder.iterdir()):
        folder.chmod(FOLDER_MODE)
    try:
        _create_private(path)
    except FileExistsError:
        pass
    for p in [path, *(Path(f"{path}{suffix}") for suffix in _COMPANIONS)]:
        try:
            if p.stat().st_mode & 0o077:
                p.chmod(FILE_MODE)
        except FileNotFoundError:
            pass


def _rows_json(rows: list[Any]) -> str:
    # One JSON array carries a whole batch into one statement (json_each) instead of one
    # round trip to the database thread per message.
    return orjson.dumps(rows).decode()


# Messages waiting for each phone (SPEC 10), counted on the indexes (msg_to, id) and
# (phone, message_id) and only up to the limit ?2: a full mailbox costs at most `limit` index
# entries per batch, a usual one (a few waiting) next to nothing. A personal message its
# recipient acknowledged on a device (SPEC 7.1) no longer waits for them, though a copy or
# another device may keep it stored.
_WAITING: Final = """
    SELECT value,
        (SELECT count(*) FROM (SELECT 1 FROM personal_messages WHERE msg_to = value AND NOT acked
                               LIMIT ?2))
      + (SELECT count(*) FROM (SELECT 1 FROM group_pending WHERE phone = value LIMIT ?2))
    FROM json_each(?1)"""


async def _waiting(db: aiosqlite.Connection, phones: set[str], limit: int) -> dict[str, int]:
    """How many messages wait for each of `phones`, counted up to `limit`."""
    rows = await db.execute_fetchall(_WAITING, (_rows_json(sorted(phones)), limit))
    return {r[0]: r[1] for r in rows}


# accepted_us (?2) is the batch's time, one value for the whole batch (SPEC 10 retention).
_INSERT_PERSONAL: Final = """
    INSERT INTO personal_messages (msg_from, msg_to, sent_us, sent_timestamp, message, accepted_us,
                                   ref)
    SELECT value->>0, value->>1, value->>2, value->>3, value->>4, ?2, value->>5 FROM json_each(?1)
    WHERE true
    ON CONFLICT DO NOTHING
    RETURNING msg_from, msg_to, sent_us, id"""
# SPEC 7.1: a new message waits for each live device of its recipient (?1: [id, msg_to, msg_from,
# device] rows, ?2: sessions used after it are live, and tokens, SPEC 12), found on index
# sessions_live alone.
_DELIVER_PERSONAL: Final = """
    INSERT INTO personal_deliveries (sid_hash, message_id)
    SELECT s.sid_hash, j.value->>0 FROM json_each(?1) AS j
    JOIN sessions AS s ON s.phone = j.value->>1 AND (s.last_used_us > ?2 OR s.kind = 'token')
    WHERE true
    ON CONFLICT DO NOTHING"""
# SPEC 7.2: and, as a copy, for each live device of its sender but the one that sent it.
_COPY_PERSONAL: Final = """
    INSERT INTO personal_deliveries (sid_hash, message_id)
    SELECT s.sid_hash, j.value->>0 FROM json_each(?1) AS j
    JOIN sessions AS s ON s.phone = j.value->>2 AND (s.last_used_us > ?2 OR s.kind = 'token')
    WHERE s.sid_hash IS NOT j.value->>3 AND j.value->>1 <> j.value->>2
    ON CONFLICT DO NOTHING
    RETURNING message_id"""


# SPEC 13: a delete_of deletes its original ([msg_from, msg_to, sent_us] of the original), with
# its deliveries and attachments (ON DELETE CASCADE); one that is gone already is no matter.
# ?1: [msg_to, msg_from, sent_us] rows (queries.unsent).
_UNSEND_PERSONAL: Final = """
    DELETE FROM personal_messages WHERE id IN (
        SELECT p.id FROM json_each(?1) AS j JOIN personal_messages AS p
        ON p.msg_to = j.value->>0 AND p.msg_from = j.value->>1 AND p.sent_us = j.value->>2)"""


# SPEC 8: new messages claim their attachments ([message id, attachment id, position, owner]
# rows): only the owner's, complete, claimed by no message yet.
_CLAIM: Final = """
    UPDATE attachments SET {column} = j.value->>0, position = j.value->>2
    FROM json_each(?1) AS j
    WHERE attachments.id = j.value->>1 AND attachments.owner = j.value->>3 AND attachments.complete
      AND personal_id IS NULL AND group_id IS NULL AND room_id IS NULL
    RETURNING attachments.id"""


async def _claim_attachments(db: aiosqlite.Connection, column: str, rows: list[list[Any]]) -> None:
    """Claim attachments for new messages in `column` (personal_id, group_id, room_id). Raises
    AttachmentRefused when one of them cannot be claimed (failing the batch: _commit then runs
    each write alone, so that only the message at fault fails)."""
    if rows and len(list(await db.execute_fetchall(
            _CLAIM.format(column=column), (_rows_json(rows),)))) != len(rows):
        raise AttachmentRefused("an attachment is unknown, not yours, not uploaded completely"
                                " or attached to another message")


def _copies(rows: Iterable[Any]) -> Counter[int]:
    """How many copies each message id got, from the RETURNING rows (message_id,) of a copy insert."""
    return Counter(r[0] for r in rows)


async def _add_personal_many(db: aiosqlite.Connection, rows: list[Any]) -> list[Stored | None | StoreError]:
    """Insert [msg_from, msg_to, sent_us, sent_timestamp, message, max_waiting, device,
    live_after_us, attachments, ref, unsent] rows in array order (which is the acceptance order,
    `id`), a delete_of deleting its original (SPEC 13), each waiting for its recipient's devices
    and, as copies, its sender's other devices (SPEC 7); Stored for each row stored, None for a
    repeated identity, MailboxFull for a row whose recipient already has max_waiting messages
    waiting."""
    limit = rows[0][5]
    admitted = admit((row[1] for row in rows), await _waiting(db, {row[1] for row in rows}, limit),
                     limit)
    taken = [[*row[:5], row[9]] for row, ok in zip(rows, admitted, strict=True) if ok]
    inserted: dict[tuple[Any, ...], int] = {}
    copies: Counter[int] = Counter()
    if taken:
        inserted = {(r[0], r[1], r[2]): r[3] for r in await db.execute_fetchall(
            _INSERT_PERSONAL, (_rows_json(taken), now_micros()))}
    if inserted:
        devices = {(row[0], row[1], row[2]): row[6] for row in rows}
        pairs = _rows_json([[i, key[1], key[0], devices[key]] for key, i in inserted.items()])
        live_after = rows[0][7]
        await _claim_attachments(db, "personal_id", claims(rows, inserted, owner=0, attachments=8))
        await db.execute(_DELIVER_PERSONAL, (pairs, live_after))
        copies = _copies(await db.execute_fetchall(_COPY_PERSONAL, (pairs, live_after)))
        originals = unsent(rows, inserted, 1, 0)
        if originals:  # after the deliveries: an original of this same batch goes too
            await db.execute(_UNSEND_PERSONAL, (_rows_json(originals),))
    results: list[Stored | None | StoreError] = []
    for row, ok in zip(rows, admitted, strict=True):
        key = (row[0], row[1], row[2])
        if ok:
            # the same identity twice in one batch: only the first is new
            message_id = inserted.pop(key, None)
            results.append(None if message_id is None else Stored([row[1]], copies[message_id]))
        elif await db.execute_fetchall(SQLITE.is_stored, (row[1], row[0], row[2])):
            results.append(None)  # a retry of a message stored before the mailbox filled up
        else:
            results.append(mailbox_full())
    return results


# For each acknowledgement [msg_from, msg_to, sent_us, received_at, device] whose message waits
# for the device: its id, whether the recipient acknowledged it already (on another device), and
# whether another device waits for it. ?2 = 0: msg_from's message to msg_to; 1: msg_to's own
# message to msg_from (a copy, SPEC 7.2), asked only for the acknowledgements that need it.
_PERSONAL_WAITING: Final = """
    SELECT j.key, p.id, p.acked,
        EXISTS (SELECT 1 FROM personal_deliveries AS o
                WHERE o.message_id = p.id AND o.sid_hash <> j.value->>4)
    FROM json_each(?1) AS j
    JOIN personal_messages AS p
      ON p.msg_to = j.value->>(1 - ?2) AND p.msg_from = j.value->>?2 AND p.sent_us = j.value->>2
    JOIN personal_deliveries AS d ON d.message_id = p.id AND d.sid_hash = j.value->>4"""
# The usual acknowledgement: the recipient's message waits for the acknowledging device only and
# no device of the recipient acknowledged it before: it goes at once (the device's row with it,
# ON DELETE CASCADE), one statement for the batch; returns the identities deleted.
_DELETE_ALONE: Final = """
    DELETE FROM personal_messages WHERE id IN (
        SELECT p.id FROM json_each(?1) AS j
        JOIN personal_messages AS p
          ON p.msg_to = j.value->>1 AND p.msg_from = j.value->>0 AND p.sent_us = j.value->>2
        JOIN personal_deliveries AS d ON d.message_id = p.id AND d.sid_hash = j.value->>4
        WHERE NOT p.acked AND NOT EXISTS (SELECT 1 FROM personal_deliveries AS o
                                          WHERE o.message_id = p.id AND o.sid_hash <> j.value->>4))
    RETURNING msg_from, msg_to, sent_us"""
# Messages whose last waiting device acknowledges them, when the recipient has (now or before):
# deleted at once, with that device's row (ON DELETE CASCADE).
_DELETE_PERSONAL: Final = """
    DELETE FROM personal_messages WHERE id IN (SELECT value FROM json_each(?1)) RETURNING id"""
# The recipient's first acknowledgement (on any device) of a message other devices still wait for.
_ACKED: Final = """
    UPDATE personal_messages SET acked = 1
    WHERE id IN (SELECT value FROM json_each(?1)) AND NOT acked
    RETURNING id"""
_SET_RECEIVED: Final = """
    INSERT INTO dialogues (msg_from, msg_to, last_received_receiver)
    SELECT value->>0, value->>1, value->>3 FROM json_each(?1) WHERE true
    ON CONFLICT DO UPDATE SET last_received_receiver = excluded.last_received_receiver"""
# The devices stop waiting ([device, message id] pairs); trigger personal_deliveries_last
# deletes a message once acknowledged with no device waiting.
_UNDELIVER_PERSONAL: Final = """
    DELETE FROM personal_deliveries WHERE (sid_hash, message_id) IN
        (SELECT value->>0, value->>1 FROM json_each(?1))"""


async def _ack_personal_many(db: aiosqlite.Connection, rows: list[Any]) -> list[Ack]:
    """Acknowledgements [msg_from, msg_to, sent_us, received_at, device] (SPEC 7.1, 7.2); for
    each, Ack.FIRST when msg_to's first device acknowledged msg_from's message (its dialogue then
    gets last_received_receiver = received_at), Ack.LATER for a later device or a copy,
    Ack.MISSING when nothing with that identity waited for the device.

    The usual acknowledgement (the recipient's only device, the message's identity once in the
    batch) deletes the message in one statement; the others (AckPlan) read first."""
    results: list[Ack | None] = [None] * len(rows)
    receipts: list[Any] = []
    once = [k for k, n in enumerate(_identity_counts(rows)) if n == 1]
    if once:
        gone = {tuple(r) for r in await db.execute_fetchall(
            _DELETE_ALONE, (_rows_json([rows[k] for k in once]),))}
        for k in once:
            if tuple(rows[k][:3]) in gone:
                results[k] = Ack.FIRST
                receipts.append(rows[k])
    rest = [k for k, r in enumerate(results) if r is None]
    if rest:
        slow = [rows[k] for k in rest]
        data = _rows_json(slow)
        plan = AckPlan(slow, {r[0]: PersonalWaiting(r[1], bool(r[2]), bool(r[3]), False)
                              for r in await db.execute_fetchall(_PERSONAL_WAITING, (data, 0))})
        if plan.copies_wanted:
            plan.add_copies({r[0]: PersonalWaiting(r[1], bool(r[2]), bool(r[3]), True)
                             for r in await db.execute_fetchall(_PERSONAL_WAITING, (data, 1))})
        plan.plan()
        marked: set[int] = set()
        if plan.mark:
            marked = {r[0] for r in await db.execute_fetchall(_ACKED, (_rows_json(plan.mark),))}
        if plan.undeliver:
            await db.execute(_UNDELIVER_PERSONAL, (_rows_json(plan.undeliver),))
        deleted: set[int] = set()
        if plan.delete:
            deleted = {r[0] for r in await db.execute_fetchall(
                _DELETE_PERSONAL, (_rows_json(plan.delete),))}
        acks, due = plan.results(marked, deleted)
        for k, ack in zip(rest, acks, strict=True):
            results[k] = ack
        receipts.extend(due)
    if receipts:
        await db.execute(_SET_RECEIVED, (_rows_json(receipts),))
    return [r if r is not None else Ack.MISSING for r in results]


_SET_SEEN: Final = """
    INSERT INTO dialogues (msg_from, msg_to, last_seen_receiver)
    SELECT value->>0, value->>1, value->>2 FROM json_each(?1) WHERE true
    ON CONFLICT DO UPDATE SET last_seen_receiver = excluded.last_seen_receiver"""


async def _read_personal_many(db: aiosqlite.Connection, rows: list[Any]) -> list[None]:
    """Set last_seen_receiver for rows [msg_from, msg_to, seen_at] (the last one per dialogue wins)."""
    await db.execute(_SET_SEEN, (_rows_json(rows),))
    return [None] * len(rows)


_INSERT_GROUP: Final = """
    INSERT INTO group_messages (grp, msg_from, sent_us, sent_timestamp, message, accepted_us, ref)
    SELECT value->>0, value->>1, value->>2, value->>3, value->>4, ?2, value->>5 FROM json_each(?1)
    WHERE EXISTS (SELECT 1 FROM group_members WHERE grp = value->>0 AND phone = value->>1)
    ON CONFLICT DO NOTHING
    RETURNING id, grp, msg_from, sent_us"""
# Every member but the sender, as membership is at this commit, for each new message.
_RECIPIENTS: Final = """
    SELECT g.id, m.phone FROM json_each(?1) AS j
    JOIN group_messages AS g ON g.id = j.value
    JOIN group_members AS m ON m.grp = g.grp AND m.phone <> g.msg_from
    ORDER BY g.id, m.phone"""
_INSERT_PENDING: Final = """
    INSERT INTO group_pending (phone, message_id)
    SELECT value->>0, value->>1 FROM json_each(?1) WHERE true"""
# SPEC 7.1: each live device of each pending recipient ([phone, message id] pairs) waits for it.
_DELIVER_GROUP: Final = """
    INSERT INTO group_deliveries (sid_hash, message_id)
    SELECT s.sid_hash, j.value->>1 FROM json_each(?1) AS j
    JOIN sessions AS s ON s.phone = j.value->>0
    WHERE s.last_used_us > ?2 OR s.kind = 'token'
    ON CONFLICT DO NOTHING"""
# SPEC 7.2: and each live device of the sender but the sending one ([id, device] pairs), a copy.
_COPY_GROUP: Final = """
    INSERT INTO group_deliveries (sid_hash, message_id)
    SELECT s.sid_hash, m.id FROM json_each(?1) AS j
    JOIN group_messages AS m ON m.id = j.value->>0
    JOIN sessions AS s ON s.phone = m.msg_from AND s.sid_hash IS NOT j.value->>1
    WHERE s.last_used_us > ?2 OR s.kind = 'token'
    ON CONFLICT DO NOTHING
    RETURNING message_id"""
_DELETE_UNADDRESSED: Final = "DELETE FROM group_messages WHERE id IN (SELECT value FROM json_each(?1))"
# SPEC 13: a delete_of deletes its original ([grp, msg_from, sent_us]) with its pending rows,
# deliveries and attachments (ON DELETE CASCADE).
_UNSEND_GROUP: Final = """
    DELETE FROM group_messages WHERE id IN (
        SELECT m.id FROM json_each(?1) AS j JOIN group_messages AS m
        ON m.grp = j.value->>0 AND m.msg_from = j.value->>1 AND m.sent_us = j.value->>2)"""


async def _add_group_many(db: aiosqlite.Connection,
                          rows: list[Any]) -> list[Stored | None | StoreError]:
    """Insert [grp, msg_from, sent_us, sent_timestamp, message, max_waiting, device,
    live_after_us, attachments, ref, unsent] rows (a delete_of deleting its original, SPEC 13),
    each waiting for its recipients' devices and, as copies, its sender's
    other devices (SPEC 7). For each row: Stored, with the phones it is pending for (may be
    empty in a group of one; members whose mailbox is full are left out), None for a repeated
    identity, or MailboxFull when every other member's mailbox is full (then nothing is kept).
    Raises NotMember (failing only that write) when msg_from is not in the group."""
    limit, live_after = rows[0][5], rows[0][7]
    inserted = await db.execute_fetchall(
        _INSERT_GROUP, (_rows_json([[*row[:5], row[9]] for row in rows]), now_micros()))
    ids = {(r[1], r[2], r[3]): r[0] for r in inserted}
    pending: dict[int, list[str]] = {i: [] for i in ids.values()}
    refused: set[int] = set()
    full: set[int] = set()  # every recipient's mailbox full: nothing is kept
    copies: Counter[int] = Counter()
    if ids:
        pairs = list(await db.execute_fetchall(_RECIPIENTS, (_rows_json(list(ids.values())),)))
        waiting = await _waiting(db, {phone for _, phone in pairs}, limit)
        taken = []
        for (message_id, phone), ok in zip(pairs, admit((p for _, p in pairs), waiting, limit),
                                           strict=True):
            if ok:
                pending[message_id].append(phone)
                taken.append((phone, message_id))
            else:
                refused.add(message_id)
        if taken:
            await db.execute(_INSERT_PENDING, (_rows_json(taken),))
            await db.execute(_DELIVER_GROUP, (_rows_json(taken), live_after))
        full = {i for i in refused if not pending[i]}
        devices = {(row[0], row[1], row[2]): row[6] for row in rows}
        senders = [[i, devices[key]] for key, i in ids.items() if i not in full]
        await _claim_attachments(db, "group_id", claims(
            rows, {key: i for key, i in ids.items() if i not in full}, owner=1, attachments=8))
        if senders:
            copies = _copies(await db.execute_fetchall(_COPY_GROUP, (_rows_json(senders), live_after)))
        # a group of one with no other device of the sender, or every recipient full
        unaddressed = [i for i, phones in pending.items() if (not phones and not copies[i]) or i in full]
        if unaddressed:
            await db.execute(_DELETE_UNADDRESSED, (_rows_json(unaddressed),))
        originals = unsent(rows, [key for key, i in ids.items() if i not in full], 0, 1)
        if originals:
            await db.execute(_UNSEND_GROUP, (_rows_json(originals),))
    results: list[Stored | None | StoreError] = []
    for row in rows:
        message_id = ids.pop((row[0], row[1], row[2]), None)
        if message_id is not None:
            results.append(mailbox_full() if message_id in full
                           else Stored(pending[message_id], copies[message_id]))
        elif not await db.execute_fetchall(SQLITE.is_member, (row[0], row[1])):
            # In a batch of several, _commit then runs every write alone: only this one fails.
            raise NotMember(f"{row[1]} is not a participant of {row[0]}")
        else:
            results.append(None)
    return results


# For each acknowledgement [grp, msg_from, sent_us, phone, device]: the message's id when it
# waits for the device.
_GROUP_WAITING: Final = """
    SELECT j.key, m.id FROM json_each(?1) AS j
    JOIN group_messages AS m
    ON m.grp = j.value->>0 AND m.msg_from = j.value->>1 AND m.sent_us = j.value->>2
    JOIN group_deliveries AS d ON d.message_id = m.id AND d.sid_hash = j.value->>4"""
_DELETE_PENDING: Final = """
    DELETE FROM group_pending WHERE (phone, message_id) IN
        (SELECT value->>0, value->>1 FROM json_each(?1))
    RETURNING phone, message_id"""
# The devices stop waiting ([device, message id] pairs); triggers group_deliveries_last and
# group_pending_last delete a message once no one is pending and no device waits.
_UNDELIVER_GROUP: Final = """
    DELETE FROM group_deliveries WHERE (sid_hash, message_id) IN
        (SELECT value->>0, value->>1 FROM json_each(?1))"""


async def _ack_group_many(db: aiosqlite.Connection, rows: list[Any]) -> list[Ack]:
    """Acknowledgements [grp, msg_from, sent_us, phone, device] (SPEC 7.1): for each, Ack.FIRST
    when it took `phone` off the pending list, Ack.LATER for a later device of `phone` or a copy,
    Ack.MISSING when the message did not wait for the device."""
    found: dict[int, int] = {r[0]: r[1] for r in await db.execute_fetchall(
        _GROUP_WAITING, (_rows_json(rows),))}
    claimed: set[tuple[str, int]] = set()
    ids = [take_once((found.get(k),), row[4], claimed) for k, row in enumerate(rows)]
    wanted = [[row[3], i] for row, i in zip(rows, ids, strict=True) if i is not None]
    removed: set[tuple[Any, ...]] = set()
    if wanted:
        removed = {tuple(r) for r in await db.execute_fetchall(_DELETE_PENDING, (_rows_json(wanted),))}
        await db.execute(_UNDELIVER_GROUP, (_rows_json(
            [[row[4], i] for row, i in zip(rows, ids, strict=True) if i is not None]),))
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
    UPDATE group_members SET last_read = max(coalesce(last_read, ''), j.value->>2)
    FROM json_each(?1) AS j WHERE grp = j.value->>0 AND phone = j.value->>1"""


async def _read_group_many(db: aiosqlite.Connection, rows: list[Any]) -> list[None]:
    """Move the read position of [grp, phone, read_up_to] forward (never back)."""
    await db.execute(_SET_GROUP_READ, (_rows_json(rows),))
    return [None] * len(rows)


_INSERT_ROOM: Final = """
    INSERT INTO room_messages (room, msg_from, sent_us, sent_timestamp, message, ref)
    SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5 FROM json_each(?1)
    WHERE true
    ON CONFLICT DO NOTHING
    RETURNING room, msg_from, sent_us, id"""
_TRIM_ROOMS: Final = """
    DELETE FROM room_messages WHERE id IN (
        SELECT id FROM (SELECT id, row_number() OVER (PARTITION BY room ORDER BY id DESC) AS n
                        FROM room_messages WHERE room IN (SELECT value FROM json_each(?1)))
        WHERE n > ?2)"""
# SPEC 13: a delete_of deletes its original ([room, msg_from, sent_us]) with its attachments.
_UNSEND_ROOM: Final = """
    DELETE FROM room_messages WHERE id IN (
        SELECT m.id FROM json_each(?1) AS j JOIN room_messages AS m
        ON m.room = j.value->>0 AND m.msg_from = j.value->>1 AND m.sent_us = j.value->>2)"""


async def _add_room_many(db: aiosqlite.Connection, rows: list[Any]) -> list[int | None]:
    """Append [room, msg_from, sent_us, sent_timestamp, message, keep, attachments, ref, unsent]
    rows to room histories (each claiming its attachments, a delete_of deleting its original)
    and drop what falls beyond `keep`; for each row its id (the room's order), or None for a
    repeated identity."""
    inserted = {(r[0], r[1], r[2]): r[3] for r in await db.execute_fetchall(
        _INSERT_ROOM, (_rows_json([[*row[:5], row[7]] for row in rows]),))}
    await _claim_attachments(db, "room_id", claims(rows, inserted, owner=1, attachments=6))
    originals = unsent(rows, inserted, 0, 1)
    if originals:
        await db.execute(_UNSEND_ROOM, (_rows_json(originals),))
    rooms = sorted({row[0] for row in rows})
    await db.execute(_TRIM_ROOMS, (_rows_json(rooms), rows[0][5]))
    return [inserted.pop((row[0], row[1], row[2]), None) for row in rows]


# Retention (SPEC 10): the oldest first, on the index of accepted_us (migration 0002); `acked`
# says whether the recipient had it (only a device's copy or second device still waited).
_EXPIRE_PERSONAL: Final = """
    DELETE FROM personal_messages WHERE id IN (
        SELECT id FROM personal_messages WHERE accepted_us < ?1 ORDER BY accepted_us LIMIT ?2)
    RETURNING msg_from, msg_to, sent_timestamp, sent_us, accepted_us, id, acked"""
_EXPIRE_GROUP_DELIVERED: Final = """
    SELECT msg_from, grp, sent_timestamp, sent_us, accepted_us, id,
           NOT EXISTS (SELECT 1 FROM group_pending AS p WHERE p.message_id = m.id)
    FROM group_messages AS m WHERE accepted_us < ?1 ORDER BY accepted_us LIMIT ?2"""


def backup_file(source: str | Path, target: str | Path) -> None:
    """Copy the database at `source` into a new file `target` with SQLite's online backup API.

    Safe while the server runs: it reads a consistent snapshot (WAL readers never block the
    writer). Raises FileExistsError when `target` exists, FileNotFoundError when `source` does
    not, StoreError when the copy fails (then no partial `target` is left).
    """
    target = Path(target)
    if not Path(source).is_file():
        raise FileNotFoundError(f"no database at {source}")
    if target.exists():
        raise FileExistsError(f"{target} exists; choose a new file")
    try:
        src = sqlite3.connect(f"file:{Path(source).resolve()}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise _wrap(e) from e
    try:
        # A backup holds what the database holds: owner only (FILE_MODE), made before SQLite opens it.
        _create_private(target)
    except BaseException:
        src.close()
        raise
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            dst.close()
    except BaseException as e:
        target.unlink(missing_ok=True)
        if isinstance(e, sqlite3.Error):
            raise _wrap(e) from e
        raise
    finally:
        src.close()



def _statements(script: str) -> list[str]:
    """The statements of an SQL script, one by one: sqlite3's executescript would commit the
    transaction the migration runs in, so the script is run statement by statement."""
    statements, buffer = [], ""
    for piece in script.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):  # a trigger's body or a string holds `;` too
            if buffer.strip(" \t\n;"):
                statements.append(buffer)
            buffer = ""
    if buffer.strip(" \t\n;"):
        statements.append(buffer)
    return statements


def _wrap(error: BaseException) -> BaseException:
    """StoreError & co as they are; sqlite3's errors as IntegrityError (a constraint) or
    StoreError, with the cause attached."""
    if isinstance(error, StoreError) or not isinstance(error, Exception):
        return error
    constraint = isinstance(error, sqlite3.IntegrityError)
    wrapped = (IntegrityError if constraint else StoreError)(f"{type(error).__name__}: {error}")
    wrapped.__cause__ = error
    return wrapped


class SqliteStore(SqlStore[aiosqlite.Connection]):
    """All persistent state in one SQLite file. Open with `await SqliteStore.open(path)` (or
    `connect(config)`), close with `await store.close()`."""

    SQL = SQLITE
    LIVE_SESSIONS = ("SELECT s.sid_hash, s.last_used_us FROM sessions AS s JOIN users AS u"
                     " ON u.phone = s.phone WHERE s.sid_hash IN (SELECT value FROM json_each(?1))"
                     " AND (s.last_used_us > ?2 OR s.kind = 'token') AND NOT u.disabled")
    TOUCH_SESSIONS = ("UPDATE sessions SET last_used_us = ?2 WHERE sid_hash IN"
                      " (SELECT value FROM json_each(?1)) AND last_used_us < ?3"
                      " AND (last_used_us > ?4 OR kind = 'token')")
    ATTACHMENTS_TO_SEND = (f"SELECT {ATTACHMENT_COLUMNS} FROM attachments"
                           " WHERE id IN (SELECT value FROM json_each(?1)) AND owner = ?2 AND complete"
                           " AND personal_id IS NULL AND group_id IS NULL AND room_id IS NULL")
    ATTACHMENTS_OF = (f"SELECT {{column}}, {ATTACHMENT_COLUMNS} FROM attachments"
                      " WHERE {column} IN (SELECT value FROM json_each(?1)) ORDER BY {column}, position")
    # SPEC 9: ?3 a JSON array of [phone, conversation] pairs; subscribed devices found by phone
    # (push_subscriptions_phone), then their sessions by key.
    PUSH_TARGETS = ("SELECT s.sid_hash, s.phone, ps.endpoint, ps.p256dh, ps.auth, w.value->>1"
                    " FROM json_each(?3) AS w"
                    " JOIN push_subscriptions AS ps ON ps.phone = w.value->>0"
                    " JOIN sessions AS s ON s.sid_hash = ps.sid_hash"
                    "      AND (s.last_used_us > ?2 OR s.kind = 'token')"
                    " JOIN users AS u ON u.phone = s.phone AND NOT u.disabled"
                    " WHERE NOT EXISTS (SELECT 1 FROM mutes AS m WHERE m.phone = w.value->>0"
                    "                   AND m.conversation = w.value->>1 AND m.until_us > ?1)"
                    " ORDER BY w.key, s.sid_hash")
    SCHEMA = SCHEMA_PATH
    MIGRATIONS = migrate.MIGRATIONS_DIR / "sqlite"
    RUNNERS = Runners(_add_personal_many, _ack_personal_many, _read_personal_many,
                      _add_group_many, _ack_group_many, _read_group_many, _add_room_many,
                      call_ops)

    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection,
                 scrub_seconds: float, rooms_keep: int, max_waiting: int = 10000,
                 session_seconds: float = DEFAULT_SESSION_SECONDS) -> None:
        super().__init__(scrub_seconds, rooms_keep, max_waiting, session_seconds)
        self._writer = writer
        self._reader = reader

    @classmethod
    async def connect(cls, config: Config) -> SqliteStore:
        """The store at `[database] path`, with the config's settings."""
        db = config.database
        return await cls.open(db.path, synchronous=db.synchronous, scrub_seconds=db.scrub_seconds,
                              rooms_keep=config.rooms.keep,
                              max_waiting=config.limits.max_waiting_per_recipient,
                              session_seconds=config.security.session_seconds)

    @classmethod
    async def open(cls, path: str | Path, *, synchronous: str = "FULL",
                   scrub_seconds: float = 5.0, rooms_keep: int = 1000,
                   max_waiting: int = 10000,
                   session_seconds: float = DEFAULT_SESSION_SECONDS) -> SqliteStore:
        """Open (creating if needed) the database at `path`, check its integrity, bring its schema
        to this release's version (migrate.py).

        Raises CorruptDatabase when `PRAGMA quick_check` does not answer "ok", SchemaTooNew for a
        database of a newer release, StoreError when SQLite fails otherwise.
        """
        make_private(path)
        try:
            # isolation_level=None: no implicit transactions; we write BEGIN/COMMIT ourselves.
            writer = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as e:
            raise _wrap(e) from e
        try:
            try:
                await cls._prepare(writer, synchronous)
                rows = await writer.execute_fetchall("PRAGMA quick_check")
            except sqlite3.DatabaseError as e:
                # Not a database at all, or a damaged page; a locked file is not called corrupt.
                if e.sqlite_errorcode not in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
                    raise
                raise CorruptDatabase(f"{path} is not a usable SQLite database: {e}") from None
            result = [r[0] for r in rows]
            if result != ["ok"]:
                raise CorruptDatabase(f"{path} failed PRAGMA quick_check: {'; '.join(result[:5])}")
            make_private(path)  # the -wal and -shm exist now; an old deployment's are tightened
            await cls._migrate(writer, str(path))
            reader = await aiosqlite.connect(path, isolation_level=None)
            await reader.execute("PRAGMA query_only=ON")
            await reader.execute("PRAGMA busy_timeout=5000")
            blocks = await reader.execute_fetchall(SQLITE.all_blocks)
        except BaseException as e:
            await writer.close()
            if isinstance(e, sqlite3.Error):
                raise _wrap(e) from e
            raise
        store = cls(writer, reader, scrub_seconds, rooms_keep, max_waiting, session_seconds)
        store._blocks.update((r[0], r[1]) for r in blocks)
        store._start("store")
        return store

    @staticmethod
    async def _prepare(writer: aiosqlite.Connection, synchronous: str) -> None:
        """The writer's pragmas, each for a reason."""
        # WAL: readers never block the writer and a commit appends instead of rewriting pages.
        await writer.execute("PRAGMA journal_mode=WAL")
        # FULL fsyncs the WAL at every commit: an acknowledged message survives power loss.
        await writer.execute(f"PRAGMA synchronous={synchronous.upper()}")
        # Overwrite deleted content with zeros (SPEC 1). In WAL mode this reaches the main file
        # only at checkpoint, and old frames stay in the -wal file until it is truncated: scrub().
        await writer.execute("PRAGMA secure_delete=ON")
        await writer.execute("PRAGMA foreign_keys=ON")
        # A second process (run.py adduser while serving) may hold the lock for a moment.
        await writer.execute("PRAGMA busy_timeout=5000")

    @classmethod
    async def _migrate(cls, db: aiosqlite.Connection, where: str) -> None:
        """Bring the schema to this release's version in one transaction (migrate.py). BEGIN
        IMMEDIATE takes the write lock first: two processes opening one file upgrade it in turn."""
        await db.execute("BEGIN IMMEDIATE")
        try:
            tables = {r[0] for r in await db.execute_fetchall(
                "SELECT name FROM sqlite_master WHERE type = 'table'"
                " AND name IN ('schema_version', 'users')")}
            if "schema_version" in tables:
                version = list(await db.execute_fetchall(migrate.READ_VERSION))[0][0]
            else:
                version = 1 if "users" in tables else 0
            steps = migrate.plan(cls.SCHEMA, cls.MIGRATIONS, version, where)
            for number, script in steps:
                log.info("%s: applying schema version %d", where, number)
                for statement in _statements(script):
                    await db.execute(statement)
            if steps or "schema_version" not in tables:
                for statement in migrate.record(steps[-1][0] if steps else version):
                    await db.execute(statement)
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise

    @classmethod
    def backup(cls, config: Config, target: str | Path) -> str:
        """Copy the database at `[database] path` into the new file `target` (`backup_file`);
        returns the path copied."""
        backup_file(config.database.path, target)
        return str(config.database.path)

    # -- group commit hooks -------------------------------------------------------------------

    async def _connection(self) -> aiosqlite.Connection:
        return self._writer

    async def _begin(self, db: aiosqlite.Connection) -> None:
        await db.execute("BEGIN IMMEDIATE")

    async def _commit_transaction(self, db: aiosqlite.Connection) -> None:
        await db.execute("COMMIT")

    async def _rollback(self, db: aiosqlite.Connection | None) -> None:
        try:
            await self._writer.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # no transaction was open

    def _write_fault(self, error: Exception) -> bool:
        return isinstance(error, (sqlite3.Error, NotMember, AttachmentRefused))

    def _wrap(self, error: BaseException) -> BaseException:
        return _wrap(error)

    async def _scrub_once(self) -> float | None:
        """Checkpoint and truncate the WAL, never inside a batch's transaction."""
        async with self._writing:
            try:
                rows = list(await self._writer.execute_fetchall("PRAGMA wal_checkpoint(TRUNCATE)"))
                busy = bool(rows[0][0]) if rows else True
            except sqlite3.Error:
                log.exception("WAL checkpoint failed")
                busy = True
        return CHECKPOINT_RETRY_SECONDS if busy else None

    async def _close_connections(self) -> None:
        await self._reader.close()
        try:
            await self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            await self._writer.close()

    # -- reads and writes of the shared queries (queries.py) ----------------------------------

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        try:
            return list(await self._reader.execute_fetchall(sql, args))
        except sqlite3.Error as e:
            raise _wrap(e) from e

    @staticmethod
    def _text_list(texts: list[Any]) -> str:
        return _rows_json(texts)

    @staticmethod
    def _pairs(pairs: list[tuple[str, str]]) -> list[Any]:
        return [_rows_json(pairs)]

    @staticmethod
    async def _execute(db: aiosqlite.Connection, sql: str, *args: Any) -> int:
        return (await db.execute(sql, args)).rowcount

    @staticmethod
    async def _execute_many(db: aiosqlite.Connection, sql: str, rows: list[tuple[Any, ...]]) -> None:
        await db.executemany(sql, rows)

    @staticmethod
    async def _query(db: aiosqlite.Connection, sql: str, *args: Any) -> list[Any]:
        return list(await db.execute_fetchall(sql, args))

    async def _database_bytes(self) -> int:
        rows = await self._fetch("SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()")
        return int(rows[0][0])

    # -- what SQLite says in its own SQL ------------------------------------------------------

    async def update_group(self, key: str, *, name: str | None = None, add: Sequence[str] = (),
                           remove: Sequence[str] = (), admins: Sequence[str] = ()) -> None:
        async def op(db: aiosqlite.Connection) -> None:
            now = now_micros()
            if name is not None:
                await db.execute("UPDATE groups SET name = ? WHERE key = ?", (name, key))
            await db.executemany(SQLITE.add_member, [(key, p, False, now) for p in add])
            await db.executemany("DELETE FROM group_members WHERE grp = ? AND phone = ?",
                                 [(key, p) for p in remove])
            await db.executemany("UPDATE group_members SET is_admin = 1 WHERE grp = ? AND phone = ?",
                                 [(key, p) for p in admins])
            await db.execute(SQLITE.keep_an_admin, (key,))
            await db.execute(SQLITE.drop_empty_group, (key,))
        await self._write(op, deletes=bool(remove))

    async def pending_group_page(self, device: str, after: int,
                                 limit: int) -> list[tuple[int, GroupMessage]]:
        # keyset pagination on group_deliveries' primary key (sid_hash, message_id)
        rows = await self._fetch(
            "SELECT m.id, m.grp, m.msg_from, m.message, m.sent_us,"
            " (SELECT json_group_array(phone) FROM (SELECT phone FROM group_pending AS q"
            "  WHERE q.message_id = m.id ORDER BY phone)), m.ref"
            " FROM group_deliveries AS d JOIN group_messages AS m ON m.id = d.message_id"
            " WHERE d.sid_hash = ? AND d.message_id > ? ORDER BY d.message_id LIMIT ?",
            device, after, limit)
        attached = await self._attachments_of("group_id", [r[0] for r in rows])
        return [(r[0], GroupMessage(r[1], r[2], r[3], r[4], orjson.loads(r[5]), attached.get(r[0], []),
                                    r[6])) for r in rows]

    async def expire(self, before_us: int, limit: int) -> list[Expired]:
        async def op(db: aiosqlite.Connection) -> list[Expired]:
            personal = await db.execute_fetchall(_EXPIRE_PERSONAL, (before_us, limit))
            # delivered: no one pending, read before the delete (group_pending goes with it)
            group = await db.execute_fetchall(_EXPIRE_GROUP_DELIVERED, (before_us, limit))
            await db.execute(_DELETE_UNADDRESSED, (_rows_json([r[5] for r in group]),))
            return expired(personal, False) + expired(group, True)
        result: list[Expired] = await self._write(op)
        if result:  # only then: an hourly check that found nothing costs no scrub
            self._scrub_soon()
        return result

    async def pending_group_for(self, phone: str) -> list[GroupMessage]:
        rows = await self._fetch(
            "SELECT m.grp, m.msg_from, m.message, m.sent_us,"
            " (SELECT json_group_array(phone) FROM (SELECT phone FROM group_pending AS q"
            "  WHERE q.message_id = m.id ORDER BY phone)), m.ref"
            " FROM group_pending AS p JOIN group_messages AS m ON m.id = p.message_id"
            " WHERE p.phone = ? ORDER BY m.id", phone)
        return [GroupMessage(r[0], r[1], r[2], r[3], orjson.loads(r[4]), ref=r[5]) for r in rows]
