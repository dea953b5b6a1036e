"""The store interface every engine provides, its record types and its errors.

Callers (commands, api, pages, cli, auth...) import from here and catch only `StoreError` and its
subclasses: each engine wraps its driver's errors (sqlite3.Error, asyncpg's) into them, with the
driver's error as `__cause__`. docs/storage.md says how the engines keep the data.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# -- errors -------------------------------------------------------------------------------------


class StoreError(Exception):
    """The database refused or failed an operation; a failed write committed nothing."""


class IntegrityError(StoreError):
    """A constraint refused a write, e.g. a foreign key: a phone that has no account."""


class NotMember(IntegrityError):
    """A group write by someone who is not (or no longer) a participant of the group."""


class StoreClosed(StoreError):
    """An operation was submitted after `Store.close()` began."""


class CorruptDatabase(StoreError):
    """The database is damaged (SQLite: `PRAGMA quick_check`); the server refuses to serve it."""


class SchemaTooNew(StoreError):
    """The database records a schema version newer than this release knows (SPEC 10, "Upgrades"):
    it was upgraded by a newer release, and this one refuses to touch it."""


class BackupUnsupported(StoreError):
    """The engine has no `backup` of its own (PostgreSQL: use pg_dump); the message says what to use."""


# -- records ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class User:
    phone: str
    name: str
    password_hash: bytes


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A personal message waiting for its recipient's `msg_received` (SPEC 5.2)."""

    msg_from: str
    msg_to: str
    message: str
    sent_us: int


@dataclass(frozen=True, slots=True)
class DialogueSide:
    """What the receiver has received and seen of one direction of a dialogue (SPEC 4)."""

    last_received_receiver: str | None
    last_seen_receiver: str | None
    waiting: int


@dataclass(frozen=True, slots=True)
class Group:
    """A group as SPEC 4 shows it: participants and admins are sorted phones."""

    key: str
    name: str
    participants: list[str]
    admins: list[str]


@dataclass(frozen=True, slots=True)
class GroupMessage:
    """A group message still pending for someone (SPEC 5.2 `fetch_grp_msgs`)."""

    grp: str
    msg_from: str
    message: str
    sent_us: int
    pending: list[str]


@dataclass(frozen=True, slots=True)
class Room:
    name: str
    created_by: str | None
    password_hash: bytes | None

    @property
    def private(self) -> bool:
        return self.password_hash is not None


@dataclass(frozen=True, slots=True)
class RoomMessage:
    id: int  # the room's order
    msg_from: str
    message: str
    sent_us: int


@dataclass(frozen=True, slots=True)
class Contact:
    """One of a user's contacts. `shares_presence`: each has the other as a contact, neither has
    blocked the other and the contact does not hide its presence (issue 12, finding 6); only then
    is `last_seen_us` given (else None) and may its online state be shown."""

    phone: str
    name: str
    last_seen_us: int | None
    shares_presence: bool = False


# -- the interface ------------------------------------------------------------------------------


class Store(Protocol):
    """All persistent state. An engine opens with `await Engine.connect(config)` (see
    `stores.open_store`) and closes with `await store.close()`.

    Each method is one unit of work (one transaction) named for what it means, returning records
    or plain values, never cursors. Times ending in `_us` are microseconds since the Unix epoch,
    UTC; text times are in the server format of SPEC 5. Every method may raise StoreError (with
    the driver's error as its cause; IntegrityError for a constraint) and, once `close()` has
    begun, StoreClosed. The per-message writes return a future that resolves after the COMMIT
    that holds the write (group commit); futures resolve in submission order.
    """

    async def close(self) -> None:
        """Finish every queued write, scrub what a delete left behind, close the connections."""
        ...

    async def scrub(self) -> None:
        """Make deleted bodies go now, and return when it is done (SPEC 6). SQLite: checkpoint
        and truncate the WAL. PostgreSQL: VACUUM the message tables (docs/storage.md says what
        that does and does not remove). The store does this by itself within `scrub_seconds` of
        a delete."""
        ...

    def is_blocked(self, blocker: str, blocked: str) -> bool:
        """True when `blocker` has blocked `blocked` (from memory: asked on every message; on
        PostgreSQL kept up to date across processes by the blocks' notifications)."""
        ...

    # -- the per-message writes (group commit) ------------------------------------------------

    def add_personal(self, msg_from: str, msg_to: str, sent_us: int, sent_timestamp: str,
                     message: str) -> asyncio.Future[bool]:
        """Store a message durably. False when the same identity (msg_from, msg_to, sent_us) is
        already stored: a retry, not stored twice (SPEC 5.1). The dialogue rows are created by a
        trigger. Fails with IntegrityError for a phone that has no account."""
        ...

    def ack_personal(self, msg_from: str, msg_to: str, sent_us: int,
                     received_at: str) -> asyncio.Future[bool]:
        """msg_to acknowledges msg_from's message `sent_us` (SPEC 5.1 `msg_received`): delete it and
        set last_received_receiver of msg_from -> msg_to. False when no such message is stored."""
        ...

    def read_personal(self, msg_from: str, msg_to: str, seen_at: str) -> asyncio.Future[None]:
        """msg_to has seen msg_from's messages (SPEC 5.1 `msg_read`): set last_seen_receiver."""
        ...

    def add_group_message(self, grp: str, msg_from: str, sent_us: int, sent_timestamp: str,
                          message: str) -> asyncio.Future[list[str] | None]:
        """Store a group message durably, pending for every other participant (SPEC 5.3).
        Resolves to the sorted phones it is pending for, or None for a retry of a message still
        stored; fails with NotMember when msg_from is not a participant."""
        ...

    def ack_group(self, grp: str, msg_from: str, sent_us: int, phone: str) -> asyncio.Future[bool]:
        """`phone` acknowledges msg_from's message in grp: remove it from the pending list (the
        last acknowledgement deletes the message). False when it was not pending for `phone`."""
        ...

    def read_group(self, grp: str, phone: str, up_to: str) -> asyncio.Future[None]:
        """Move `phone`'s read position in grp forward (never back) to `up_to` (server format)."""
        ...

    def add_room_message(self, room: str, msg_from: str, sent_us: int, sent_timestamp: str,
                         message: str) -> asyncio.Future[int | None]:
        """Append to a room's history (keeping the latest `[rooms] keep`); resolves to the
        message's id, or None for a retry. On PostgreSQL the ids come from one sequence shared by
        every process: they increase in each process's commit order."""
        ...

    # -- users and sessions -------------------------------------------------------------------

    async def add_user(self, phone: str, name: str, password_hash: bytes) -> bool:
        """Create an account; False when the phone is taken."""
        ...

    async def get_user(self, phone: str) -> User | None:
        """The account with this phone, or None."""
        ...

    async def user_exists(self, phone: str) -> bool:
        """True when an account has this phone."""
        ...

    async def set_password(self, phone: str, password_hash: bytes) -> bool:
        """Replace a password and end every session of that account; False for an unknown phone."""
        ...

    async def delete_user(self, phone: str) -> bool:
        """Delete an account with its sessions, dialogues, blocks and stored messages; False if
        unknown."""
        ...

    async def add_session(self, sid_hash: str, phone: str) -> None:
        """Record a login (SPEC 4: the cookie names a session the server records)."""
        ...

    async def delete_session(self, sid_hash: str) -> None:
        """Forget a login, so that a replayed cookie is refused."""
        ...

    async def session_user(self, sid_hash: str, max_age_seconds: int) -> str | None:
        """The phone logged in under this session, or None when unknown or older than max_age."""
        ...

    # -- dialogues ----------------------------------------------------------------------------

    async def open_dialogue(self, a: str, b: str) -> None:
        """Record a dialogue between a and b (both directions); idempotent."""
        ...

    async def dialogues_of(self, phone: str) -> list[str]:
        """The phones `phone` has a dialogue with, sorted."""
        ...

    async def has_dialogue(self, a: str, b: str) -> bool:
        """True when a and b have a dialogue (a message, or POST /chat/special/personal, opened
        it; either direction's row)."""
        ...

    async def dialogue_side(self, msg_from: str, msg_to: str) -> DialogueSide:
        """What msg_to has received and seen of msg_from's messages, and how many still wait."""
        ...

    async def pending_for(self, msg_to: str) -> list[StoredMessage]:
        """Personal messages stored for msg_to, in the order the server accepted them (SPEC 5.2)."""
        ...

    # -- groups (SPEC 4, 5.3) -----------------------------------------------------------------

    async def create_group(self, key: str, name: str, creator: str, participants: list[str]) -> bool:
        """Create a group with `creator` as participant and admin; False when the key is taken."""
        ...

    async def group(self, key: str) -> Group | None:
        """The group with this key, or None."""
        ...

    async def groups_of(self, phone: str) -> list[tuple[str, str]]:
        """(key, name) of every group `phone` is in, by name."""
        ...

    async def is_member(self, key: str, phone: str) -> bool:
        """True when `phone` is a participant of group `key`."""
        ...

    async def update_group(self, key: str, *, name: str | None = None, add: Sequence[str] = (),
                           remove: Sequence[str] = (), admins: Sequence[str] = ()) -> None:
        """Rename, add and remove participants, grant admin, in one transaction (SPEC 4 PATCH).

        Removing drops the member from every pending list of the group (messages left with no one
        pending are deleted, by trigger). When the last admin leaves, the longest-standing
        remaining member becomes admin; when the last member leaves, the group is deleted.
        """
        ...

    async def members(self, key: str) -> list[tuple[str, str, str | None]]:
        """(phone, name, read position) of each participant, by phone; the read position is the
        server time of the last message read, or None."""
        ...

    async def pending_group_for(self, phone: str) -> list[GroupMessage]:
        """Group messages still pending for `phone`, oldest first, each with its pending list."""
        ...

    # -- rooms (SPEC 5.4) ---------------------------------------------------------------------

    async def create_room(self, name: str, created_by: str, password_hash: bytes | None) -> bool:
        """Create a room (private when it has a password hash); False when the name is taken."""
        ...

    async def room(self, name: str) -> Room | None:
        """The room with this name, or None."""
        ...

    async def rooms(self) -> list[Room]:
        """Every room, by name."""
        ...

    async def rooms_for(self, phone: str, sid_hash: str, newest_public: int) -> list[Room]:
        """The rooms `phone` is shown in /chat/info (issue 12, finding 6), by name: those it
        created, the private rooms login session `sid_hash` has given the password for, and the
        `newest_public` most recently created public rooms. Other private rooms are left out."""
        ...

    async def room_history(self, room: str, limit: int) -> list[RoomMessage]:
        """The latest `limit` messages of a room, oldest first."""
        ...

    async def grant_room(self, sid_hash: str, room: str) -> None:
        """Remember that a login session gave a private room's password."""
        ...

    async def room_granted(self, sid_hash: str, room: str) -> bool:
        """True when this login session has given the room's password."""
        ...

    # -- contacts, blocks, presence -----------------------------------------------------------

    async def set_contact(self, owner: str, phone: str, name: str) -> None:
        """Add `phone` to owner's contacts under `name`, or rename it."""
        ...

    async def remove_contact(self, owner: str, phone: str) -> bool:
        """Remove a contact; False when it was not there."""
        ...

    async def contacts_of(self, owner: str) -> list[Contact]:
        """Owner's contacts by name, each with `shares_presence` and, when it is True, when it was
        last seen online (microseconds) or None."""
        ...

    async def watchers_of(self, phone: str) -> list[str]:
        """Who is told of `phone`'s presence, sorted (issue 12, finding 6): those who have `phone`
        as a contact and whom `phone` has as a contact, with no block between them either way;
        nobody when `phone` hides its presence (users.hide_presence)."""
        ...

    async def set_hide_presence(self, phone: str, hidden: bool) -> None:
        """Hide (or show again) `phone`'s presence and last seen from everyone; nothing for an
        unknown phone."""
        ...

    async def set_last_seen(self, phone: str, us: int) -> None:
        """Record when `phone` was last online."""
        ...

    async def block(self, blocker: str, blocked: str) -> None:
        """`blocker` no longer accepts messages, typing or new groups from `blocked`. This process
        knows at once; other processes (PostgreSQL) when they hear the commit's notification."""
        ...

    async def unblock(self, blocker: str, blocked: str) -> bool:
        """Lift a block; False when there was none."""
        ...

    async def blocked_by(self, blocker: str) -> list[str]:
        """The phones `blocker` has blocked, sorted."""
        ...
