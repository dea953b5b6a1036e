"""The SQL both engines share, written once, and the reads and rare writes made of it.

Each query is written once with PostgreSQL's numbered placeholders ($1, $2...); SQLite's engine
uses the same text with ?1, ?2... (`for_sqlite`), which SQLite binds by number as well. What
really differs per engine (the batch runners, `pending_group_for`, `update_group`) stays in the
engine's module.
"""

from __future__ import annotations

import dataclasses
import re
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from ..protocol import now_micros
from .base import Contact, DialogueSide, Group, Room, RoomMessage, StoredMessage, User
from .groupcommit import DB, GroupCommitStore


@dataclass(frozen=True, slots=True)
class Queries:
    """One SQL text per shared query, in one engine's placeholder style."""

    add_user: str = ("INSERT INTO users (phone, name, password_hash, created_us)"
                     " VALUES ($1, $2, $3, $4) ON CONFLICT (phone) DO NOTHING")
    get_user: str = "SELECT phone, name, password_hash FROM users WHERE phone = $1"
    user_exists: str = "SELECT 1 FROM users WHERE phone = $1"
    set_password: str = "UPDATE users SET password_hash = $1 WHERE phone = $2"
    end_sessions: str = "DELETE FROM sessions WHERE phone = $1"
    delete_user: str = "DELETE FROM users WHERE phone = $1"
    add_session: str = "INSERT INTO sessions (sid_hash, phone, created_us) VALUES ($1, $2, $3)"
    delete_session: str = "DELETE FROM sessions WHERE sid_hash = $1"
    session_user: str = "SELECT phone FROM sessions WHERE sid_hash = $1 AND created_us > $2"
    # Sorted: two processes opening one dialogue from both ends lock in the same order. SQLite
    # needs the WHERE of an INSERT ... SELECT ... ON CONFLICT (its parser would read ON as a join's).
    open_dialogue: str = ("INSERT INTO dialogues (msg_from, msg_to)"
                          " SELECT * FROM (VALUES ($1, $2), ($2, $1)) AS v WHERE true ORDER BY 1, 2"
                          " ON CONFLICT DO NOTHING")
    dialogues_of: str = ("SELECT msg_to FROM dialogues WHERE msg_from = $1"
                         " UNION SELECT msg_from FROM dialogues WHERE msg_to = $1 ORDER BY 1")
    has_dialogue: str = "SELECT 1 FROM dialogues WHERE msg_from = $1 AND msg_to = $2"
    dialogue_side: str = (
        "SELECT (SELECT last_received_receiver FROM dialogues WHERE msg_from = $1 AND msg_to = $2),"
        " (SELECT last_seen_receiver FROM dialogues WHERE msg_from = $1 AND msg_to = $2),"
        " (SELECT count(*) FROM personal_messages WHERE msg_from = $1 AND msg_to = $2)")
    pending_for: str = ("SELECT msg_from, msg_to, message, sent_us FROM personal_messages"
                        " WHERE msg_to = $1 ORDER BY id")
    create_group: str = ("INSERT INTO groups (key, name, created_us) VALUES ($1, $2, $3)"
                         " ON CONFLICT DO NOTHING")
    add_member: str = ("INSERT INTO group_members (grp, phone, is_admin, joined_us)"
                       " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
    group: str = ("SELECT g.name, m.phone, m.is_admin FROM groups AS g"
                  " JOIN group_members AS m ON m.grp = g.key WHERE g.key = $1 ORDER BY m.phone")
    groups_of: str = ("SELECT g.key, g.name FROM group_members AS m JOIN groups AS g ON g.key = m.grp"
                      " WHERE m.phone = $1 ORDER BY g.name, g.key")
    is_member: str = "SELECT 1 FROM group_members WHERE grp = $1 AND phone = $2"
    members: str = ("SELECT m.phone, u.name, m.last_read FROM group_members AS m"
                    " JOIN users AS u ON u.phone = m.phone WHERE m.grp = $1 ORDER BY m.phone")
    # When the last admin leaves, the longest-standing remaining member becomes admin.
    keep_an_admin: str = (
        "UPDATE group_members SET is_admin = true WHERE grp = $1 AND phone = ("
        " SELECT phone FROM group_members WHERE grp = $1 ORDER BY joined_us, phone LIMIT 1)"
        " AND NOT EXISTS (SELECT 1 FROM group_members WHERE grp = $1 AND is_admin)")
    drop_empty_group: str = ("DELETE FROM groups WHERE key = $1"
                             " AND NOT EXISTS (SELECT 1 FROM group_members WHERE grp = $1)")
    create_room: str = ("INSERT INTO rooms (name, created_by, password_hash, created_us)"
                        " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
    room: str = "SELECT name, created_by, password_hash FROM rooms WHERE name = $1"
    rooms: str = "SELECT name, created_by, password_hash FROM rooms ORDER BY name"
    # Issue 12, finding 6: the rooms one user is shown (see Store.rooms_for).
    rooms_for: str = (
        "SELECT name, created_by, password_hash FROM rooms WHERE created_by = $1"
        " OR (password_hash IS NOT NULL AND name IN (SELECT room FROM session_rooms WHERE sid_hash = $2))"
        " OR name IN (SELECT name FROM rooms WHERE password_hash IS NULL"
        "             ORDER BY created_us DESC, name LIMIT $3)"
        " ORDER BY name")
    room_history: str = (
        "SELECT id, msg_from, message, sent_us FROM (SELECT id, msg_from, message, sent_us"
        " FROM room_messages WHERE room = $1 ORDER BY id DESC LIMIT $2) AS h ORDER BY id")
    grant_room: str = ("INSERT INTO session_rooms (sid_hash, room) VALUES ($1, $2)"
                       " ON CONFLICT DO NOTHING")
    room_granted: str = "SELECT 1 FROM session_rooms WHERE sid_hash = $1 AND room = $2"
    set_contact: str = ("INSERT INTO contacts (owner, phone, name) VALUES ($1, $2, $3)"
                        " ON CONFLICT (owner, phone) DO UPDATE SET name = excluded.name")
    remove_contact: str = "DELETE FROM contacts WHERE owner = $1 AND phone = $2"
    # Presence is shared between $1 (the owner, or the watcher) and a contact only when each has
    # the other as a contact, neither has blocked the other, and the contact does not hide it
    # (issue 12, finding 6). SQLite's hide_presence is 0/1, PostgreSQL's a boolean: NOT reads both.
    contacts_of: str = (
        "SELECT phone, name, CASE WHEN shared THEN last_seen_us END, shared FROM ("
        " SELECT c.phone, c.name, u.last_seen_us,"
        "  (NOT u.hide_presence"
        "   AND EXISTS (SELECT 1 FROM contacts AS r WHERE r.owner = c.phone AND r.phone = c.owner)"
        "   AND NOT EXISTS (SELECT 1 FROM blocks AS b WHERE (b.blocker = c.owner AND b.blocked = c.phone)"
        "                   OR (b.blocker = c.phone AND b.blocked = c.owner))) AS shared"
        " FROM contacts AS c JOIN users AS u ON u.phone = c.phone WHERE c.owner = $1) AS s"
        " ORDER BY name, phone")
    watchers_of: str = (
        "SELECT c.owner FROM contacts AS c"
        " JOIN contacts AS r ON r.owner = c.phone AND r.phone = c.owner"
        " JOIN users AS u ON u.phone = c.phone"
        " WHERE c.phone = $1 AND NOT u.hide_presence"
        " AND NOT EXISTS (SELECT 1 FROM blocks AS b WHERE (b.blocker = $1 AND b.blocked = c.owner)"
        "                 OR (b.blocker = c.owner AND b.blocked = $1))"
        " ORDER BY 1")
    set_hide_presence: str = "UPDATE users SET hide_presence = $1 WHERE phone = $2"
    set_last_seen: str = "UPDATE users SET last_seen_us = $1 WHERE phone = $2"
    block: str = "INSERT INTO blocks (blocker, blocked) VALUES ($1, $2) ON CONFLICT DO NOTHING"
    unblock: str = "DELETE FROM blocks WHERE blocker = $1 AND blocked = $2"
    blocked_by: str = "SELECT blocked FROM blocks WHERE blocker = $1 ORDER BY blocked"
    all_blocks: str = "SELECT blocker, blocked FROM blocks"


_NUMBERED: Final = re.compile(r"\$(\d+)")


def for_sqlite(sql: str) -> str:
    """`sql` with $1, $2... written as ?1, ?2... (SQLite's numbered placeholders)."""
    return _NUMBERED.sub(r"?\1", sql)


POSTGRES: Final = Queries()
SQLITE: Final = Queries(**{f.name: for_sqlite(getattr(POSTGRES, f.name))
                           for f in dataclasses.fields(Queries)})


def _room(r: Sequence[Any]) -> Room:
    return Room(r[0], r[1], bytes(r[2]) if r[2] is not None else None)


class SqlStore(GroupCommitStore[DB]):
    """The methods both engines implement with the same SQL: reads on the engine's read
    connection(s) (`_fetch`), rare writes as one small coroutine in the next batch (`_write`)."""

    SQL: ClassVar[Queries]

    @abstractmethod
    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        """Rows of one read; the driver's errors come out as StoreError."""

    @staticmethod
    @abstractmethod
    async def _execute(db: DB, sql: str, *args: Any) -> int:
        """Run one statement on the writer connection; the number of rows it changed."""

    @staticmethod
    @abstractmethod
    async def _execute_many(db: DB, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """Run one statement once per row of arguments, on the writer connection."""

    # -- users and sessions -------------------------------------------------------------------

    async def add_user(self, phone: str, name: str, password_hash: bytes) -> bool:
        async def op(db: DB) -> bool:
            return await self._execute(db, self.SQL.add_user, phone, name, password_hash,
                                       now_micros()) == 1
        return await self._write(op)

    async def get_user(self, phone: str) -> User | None:
        rows = await self._fetch(self.SQL.get_user, phone)
        return User(rows[0][0], rows[0][1], bytes(rows[0][2])) if rows else None

    async def user_exists(self, phone: str) -> bool:
        return bool(await self._fetch(self.SQL.user_exists, phone))

    async def set_password(self, phone: str, password_hash: bytes) -> bool:
        async def op(db: DB) -> bool:
            changed = await self._execute(db, self.SQL.set_password, password_hash, phone)
            await self._execute(db, self.SQL.end_sessions, phone)
            return changed == 1
        return await self._write(op)

    async def delete_user(self, phone: str) -> bool:
        async def op(db: DB) -> bool:
            return await self._execute(db, self.SQL.delete_user, phone) == 1
        return await self._write(op, deletes=True)

    async def add_session(self, sid_hash: str, phone: str) -> None:
        async def op(db: DB) -> None:
            await self._execute(db, self.SQL.add_session, sid_hash, phone, now_micros())
        await self._write(op)

    async def delete_session(self, sid_hash: str) -> None:
        async def op(db: DB) -> None:
            await self._execute(db, self.SQL.delete_session, sid_hash)
        await self._write(op)

    async def session_user(self, sid_hash: str, max_age_seconds: int) -> str | None:
        rows = await self._fetch(self.SQL.session_user, sid_hash,
                                 now_micros() - max_age_seconds * 1_000_000)
        return rows[0][0] if rows else None

    # -- dialogues ----------------------------------------------------------------------------

    async def open_dialogue(self, a: str, b: str) -> None:
        async def op(db: DB) -> None:
            await self._execute(db, self.SQL.open_dialogue, a, b)
        await self._write(op)

    async def dialogues_of(self, phone: str) -> list[str]:
        return [r[0] for r in await self._fetch(self.SQL.dialogues_of, phone)]

    async def has_dialogue(self, a: str, b: str) -> bool:
        # Both directions' rows are made together (open_dialogue, the messages' trigger).
        return bool(await self._fetch(self.SQL.has_dialogue, a, b))

    async def dialogue_side(self, msg_from: str, msg_to: str) -> DialogueSide:
        rows = await self._fetch(self.SQL.dialogue_side, msg_from, msg_to)
        return DialogueSide(*rows[0])

    async def pending_for(self, msg_to: str) -> list[StoredMessage]:
        return [StoredMessage(*r) for r in await self._fetch(self.SQL.pending_for, msg_to)]

    # -- groups -------------------------------------------------------------------------------

    async def create_group(self, key: str, name: str, creator: str, participants: list[str]) -> bool:
        async def op(db: DB) -> bool:
            now = now_micros()
            if await self._execute(db, self.SQL.create_group, key, name, now) != 1:
                return False
            await self._execute_many(
                db, self.SQL.add_member,
                [(key, creator, True, now)] + [(key, p, False, now) for p in participants if p != creator])
            return True
        return await self._write(op)

    async def group(self, key: str) -> Group | None:
        rows = await self._fetch(self.SQL.group, key)
        if not rows:
            return None
        return Group(key, rows[0][0], [r[1] for r in rows], [r[1] for r in rows if r[2]])

    async def groups_of(self, phone: str) -> list[tuple[str, str]]:
        return [(r[0], r[1]) for r in await self._fetch(self.SQL.groups_of, phone)]

    async def is_member(self, key: str, phone: str) -> bool:
        return bool(await self._fetch(self.SQL.is_member, key, phone))

    async def members(self, key: str) -> list[tuple[str, str, str | None]]:
        return [(r[0], r[1], r[2]) for r in await self._fetch(self.SQL.members, key)]

    # -- rooms --------------------------------------------------------------------------------

    async def create_room(self, name: str, created_by: str, password_hash: bytes | None) -> bool:
        async def op(db: DB) -> bool:
            return await self._execute(db, self.SQL.create_room, name, created_by, password_hash,
                                       now_micros()) == 1
        return await self._write(op)

    async def room(self, name: str) -> Room | None:
        rows = await self._fetch(self.SQL.room, name)
        return _room(rows[0]) if rows else None

    async def rooms(self) -> list[Room]:
        return [_room(r) for r in await self._fetch(self.SQL.rooms)]

    async def rooms_for(self, phone: str, sid_hash: str, newest_public: int) -> list[Room]:
        return [_room(r) for r in await self._fetch(self.SQL.rooms_for, phone, sid_hash, newest_public)]

    async def room_history(self, room: str, limit: int) -> list[RoomMessage]:
        return [RoomMessage(*r) for r in await self._fetch(self.SQL.room_history, room, limit)]

    async def grant_room(self, sid_hash: str, room: str) -> None:
        async def op(db: DB) -> None:
            await self._execute(db, self.SQL.grant_room, sid_hash, room)
        await self._write(op)

    async def room_granted(self, sid_hash: str, room: str) -> bool:
        return bool(await self._fetch(self.SQL.room_granted, sid_hash, room))

    # -- contacts, blocks, presence -----------------------------------------------------------

    async def set_contact(self, owner: str, phone: str, name: str) -> None:
        async def op(db: DB) -> None:
            await self._execute(db, self.SQL.set_contact, owner, phone, name)
        await self._write(op)

    async def remove_contact(self, owner: str, phone: str) -> bool:
        async def op(db: DB) -> bool:
            return await self._execute(db, self.SQL.remove_contact, owner, phone) == 1
        return await self._write(op)

    async def contacts_of(self, owner: str) -> list[Contact]:
        return [Contact(r[0], r[1], r[2], bool(r[3]))
                for r in await self._fetch(self.SQL.contacts_of, owner)]

    async def watchers_of(self, phone: str) -> list[str]:
        return [r[0] for r in await self._fetch(self.SQL.watchers_of, phone)]

    async def set_hide_presence(self, phone: str, hidden: bool) -> None:
        async def op(db: DB) -> None:
            await self._execute(db, self.SQL.set_hide_presence, hidden, phone)
        await self._write(op)

    async def set_last_seen(self, phone: str, us: int) -> None:
        async def op(db: DB) -> None:
            await self._execute(db, self.SQL.set_last_seen, us, phone)
        await self._write(op)

    async def block(self, blocker: str, blocked: str) -> None:
        async def op(db: DB) -> None:
            await self._execute(db, self.SQL.block, blocker, blocked)
        await self._write(op)
        self._blocks.add((blocker, blocked))

    async def unblock(self, blocker: str, blocked: str) -> bool:
        async def op(db: DB) -> bool:
            return await self._execute(db, self.SQL.unblock, blocker, blocked) == 1
        done = await self._write(op)
        self._blocks.discard((blocker, blocked))
        return done

    async def blocked_by(self, blocker: str) -> list[str]:
        return [r[0] for r in await self._fetch(self.SQL.blocked_by, blocker)]
