"""The store interface every engine provides, its record types and its errors.

Callers (commands, api, pages, cli, auth...) import from here and catch only `StoreError` and its
subclasses: each engine wraps its driver's errors (sqlite3.Error, asyncpg's) into them, with the
driver's error as `__cause__`. docs/storage.md says how the engines keep the data.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

import orjson

from ..protocol import DELETE_OF, REF_FIELDS, REF_KEYS, ProtocolError, parse_timestamp

# Session hashes per query of `Store.live_sessions` (64 hex characters each: ~0.7 MB a query).
LIVE_SESSIONS_BATCH: Final = 10_000
# SPEC 7: a session lasts `security.session_seconds` after its last use. A use is recorded (one
# UPDATE) only when the recorded one is older than this many seconds, or than a tenth of the
# session's lifetime when that is shorter, so that a busy session costs a write a minute, not one
# per request; a session may so expire up to that much before session_seconds after its last use.
SESSION_TOUCH_SECONDS: Final = 60.0
# The label of a device whose login said nothing recognisable (and of sessions made before
# migration 0004).
UNKNOWN_DEVICE: Final = "Unknown device"


# SPEC 8: attachment bytes are stored and read in chunks of this many bytes (a Range request
# reads only the chunks it covers; memory per transfer is about one chunk).
ATTACHMENT_CHUNK: Final = 256 * 1024
# Attachment parts: the file, and an image's thumbnail.
FILE_PART: Final = 0
THUMBNAIL_PART: Final = 1

# SPEC 9: the conversations one user may have muted at once (`Store.set_mute`); a mute whose
# time has passed does not count.
MAX_MUTES: Final = 200
# Issue 18 (SPEC 13): the rooms one user may have saved at once (`Store.save_room`).
MAX_SAVED_ROOMS: Final = 200


def touch_after_us(max_age_seconds: float) -> int:
    """Microseconds after which a session's recorded last use is recorded again (see
    SESSION_TOUCH_SECONDS): min(60 s, max_age / 10)."""
    return round(min(SESSION_TOUCH_SECONDS, max_age_seconds / 10) * 1_000_000)

def ref_target(ref: str | None) -> int | None:
    """SPEC 13: the sent_us of the original a message's `ref` (JSON text, see
    Store.add_personal) unsends when it is a `delete_of`, else None. Raises ValueError for a
    `ref` that is not one object with one reference field naming {msg_from, sent_timestamp}."""
    if ref is None:
        return None
    try:
        data = orjson.loads(ref)
        (field_name, value), = data.items()
        if field_name not in REF_FIELDS or set(value) != REF_KEYS:
            raise ValueError(field_name)
        sent_us = parse_timestamp(value["sent_timestamp"])
    except (ValueError, TypeError, AttributeError, ProtocolError):
        raise ValueError("ref must be the JSON of one reference field (SPEC 13)") from None
    return sent_us if field_name == DELETE_OF else None


# -- errors -------------------------------------------------------------------------------------


class StoreError(Exception):
    """The database refused or failed an operation; a failed write committed nothing."""


class IntegrityError(StoreError):
    """A constraint refused a write, e.g. a foreign key: a phone that has no account."""


class NotMember(IntegrityError):
    """A group write by someone who is not (or no longer) a participant of the group."""


class MailboxFull(StoreError):
    """A new message for a recipient who already has `limits.max_waiting_per_recipient` messages
    waiting (SPEC 10); nothing was stored. Only that write fails: the others of its batch commit."""


class QuotaExceeded(StoreError):
    """A new attachment would take its owner's stored attachment bytes past
    `limits.attachment_quota_bytes` (SPEC 8); nothing was stored."""


class AttachmentRefused(IntegrityError):
    """A message names an attachment that is unknown, not its sender's, not completely uploaded
    or already attached to another message (SPEC 8); the message was not stored."""


class StoreClosed(StoreError):
    """An operation was submitted after `Store.close()` began."""


class CorruptDatabase(StoreError):
    """The database is damaged (SQLite: `PRAGMA quick_check`); the server refuses to serve it."""


class SchemaTooNew(StoreError):
    """The database records a schema version newer than this release knows (SPEC 10, "Upgrades"):
    it was upgraded by a newer release, and this one refuses to touch it."""


class LastAdmin(StoreError):
    """The change would leave no enabled admin while other accounts exist (SPEC 10: someone must
    be able to administer the server); nothing was changed."""


class BackupUnsupported(StoreError):
    """The engine has no `backup` of its own (PostgreSQL: use pg_dump); the message says what to use."""


# -- records ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class User:
    phone: str
    name: str
    password_hash: bytes


@dataclass(frozen=True, slots=True)
class Attachment:
    """A photo or file (SPEC 8). `size` and `thumbnail_size` in bytes (None: no thumbnail);
    `width`, `height` in pixels, images only."""

    id: str
    owner: str
    name: str
    content_type: str
    size: int
    width: int | None = None
    height: int | None = None
    thumbnail_size: int | None = None

    def wire(self) -> dict[str, Any]:
        """As frames and the upload's answer carry it (SPEC 8): `width` and `height` for images
        only."""
        return wire_attachment(self.id, self.name, self.content_type, self.size, self.width,
                               self.height, self.thumbnail_size is not None)


def wire_attachment(id: str, name: str, content_type: str, size: int, width: int | None,
                    height: int | None, thumbnail: bool) -> dict[str, Any]:
    """One attachment as SPEC 8's frames carry it."""
    wire: dict[str, Any] = {"id": id, "name": name, "content_type": content_type, "size": size}
    if width is not None and height is not None:
        wire["width"], wire["height"] = width, height
    wire["thumbnail"] = thumbnail
    return wire


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A personal message waiting for its recipient's `msg_received` (SPEC 5.2); `attachments`
    as frames carry them (SPEC 8)."""

    msg_from: str
    msg_to: str
    message: str
    sent_us: int
    attachments: list[dict[str, Any]] = field(default_factory=list)
    ref: str | None = None  # SPEC 13: the reference field as JSON text (see ref_target), or None


@dataclass(frozen=True, slots=True)
class Stored:
    """A new message, committed (SPEC 7): `pending`, the recipients it waits for (personal: the
    recipient; group: the other participants whose mailbox had room, sorted); `copies`, how many
    of the sender's other devices got a copy to acknowledge (SPEC 7.2), the sending device never."""

    pending: list[str]
    copies: int


class Ack(enum.Enum):
    """What one device's acknowledgement did (SPEC 7.1)."""

    MISSING = 0  # nothing with that identity waits for this device: the error frame
    FIRST = 1  # the recipient's first acknowledgement on any device: the receipt of 5.1 / 5.3
    LATER = 2  # another device of the recipient, or a copy of one's own message: silent


@dataclass(frozen=True, slots=True)
class Expired:
    """A message deleted because it waited `retention.undelivered_days` (SPEC 10): what its
    sender's `msg_expired` says. `msg_to` is the recipient's phone, or the group key when `group`;
    `sent_timestamp` is the sender's own, as sent. `delivered`: every recipient had acknowledged
    it on a device (only a device's copy was still waiting, SPEC 7.1): no `msg_expired` is due."""

    msg_from: str
    msg_to: str
    sent_timestamp: str
    sent_us: int
    group: bool
    delivered: bool = False


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
    attachments: list[dict[str, Any]] = field(default_factory=list)
    ref: str | None = None  # SPEC 13, as StoredMessage.ref


@dataclass(frozen=True, slots=True)
class Room:
    """A room (SPEC 5.4): `created_by` None once its creator's account is deleted; `category`
    (SPEC 13, 1-32 characters) None when it was made without one."""

    name: str
    created_by: str | None
    password_hash: bytes | None
    category: str | None = None

    @property
    def private(self) -> bool:
        return self.password_hash is not None


@dataclass(frozen=True, slots=True)
class RoomMessage:
    id: int  # the room's order
    msg_from: str
    message: str
    sent_us: int
    attachments: list[dict[str, Any]] = field(default_factory=list)
    ref: str | None = None  # SPEC 13, as StoredMessage.ref


@dataclass(frozen=True, slots=True)
class Contact:
    """One of a user's contacts. `shares_presence`: each has the other as a contact, neither has
    blocked the other and the contact does not hide its presence (issue 12, finding 6); only then
    is `last_seen_us` given (else None) and may its online state be shown."""

    phone: str
    name: str
    last_seen_us: int | None
    shares_presence: bool = False


@dataclass(frozen=True, slots=True)
class Account:
    """An account as administration sees it (SPEC 10 `GET /chat/admin/users`): `devices` is the
    number of live sessions (used within the maximum age asked for, SPEC 7), `waiting` the messages
    stored for the account (personal ones plus group ones still pending for it)."""

    phone: str
    name: str
    admin: bool
    disabled: bool
    hide_presence: bool
    created_us: int
    last_seen_us: int | None
    devices: int
    waiting: int


@dataclass(frozen=True, slots=True)
class Device:
    """A device of a user (SPEC 7): one live login session. `id` is opaque (neither the session
    secret nor its hash), `label` what its login's User-Agent said, `current` True for the
    session that asked."""

    id: str
    label: str
    created_us: int
    last_used_us: int
    current: bool


@dataclass(frozen=True, slots=True)
class Invite:
    """An invite (SPEC 10): `uses` as made, `uses_left` of them left until `expires_us`;
    `created_by` None when `run.py invite` made it (or its admin was deleted)."""

    code: str
    created_by: str | None
    uses: int
    uses_left: int
    created_us: int
    expires_us: int


@dataclass(frozen=True, slots=True)
class PushSubscription:
    """A device's Web Push subscription (SPEC 9), as the browser's PushSubscription gave it:
    `device` is the session's sid_hash (a device, SPEC 7), `phone` its user, `endpoint` the push
    service's URL (a capability: never logged), `p256dh` and `auth` its keys in base64url.

    `conversation` is set only in what `Store.push_targets` returns: the conversation of the
    (phone, conversation) pair the subscription answers ("" elsewhere)."""

    device: str
    phone: str
    endpoint: str
    p256dh: str
    auth: str
    conversation: str = ""


# What `Store.register_user` did: "created", "taken" (the phone has an account), "closed"
# (registration is closed and the database already holds an account), "invite" (no usable
# invite: unknown, expired or used up).
RegistrationOutcome = Literal["created", "taken", "closed", "invite"]


@dataclass(frozen=True, slots=True)
class Registered:
    outcome: RegistrationOutcome
    admin: bool  # the new account is an admin (the first one, or asked for)


@dataclass(frozen=True, slots=True)
class Stats:
    """SPEC 10 `GET /chat/admin/stats`, the store's part: accounts, live sessions, stored
    personal and group messages (each group message once), the database's size in bytes."""

    users: int
    devices: int
    stored_messages: int
    database_bytes: int


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
        """Finish every queued write, scrub what a delete left behind, close the connections.
        A second call does nothing."""
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
                     message: str, device: str | None = None, attachments: Sequence[str] = (),
                     *, ref: str | None = None) -> asyncio.Future[Stored | None]:
        """Store a message durably, with the commit's time as its `accepted_us`, waiting for each
        live device of msg_to and, as a copy, for each live device of msg_from but `device` (the
        sending session's hash; None: every one) (SPEC 7.1, 7.2). None when the same identity
        (msg_from, msg_to, sent_us) is already stored: a retry, not stored twice (SPEC 5.1). The
        dialogue rows are created by a trigger. Fails with IntegrityError for a phone that has no
        account, and with MailboxFull when `max_waiting` messages already wait for msg_to
        (personal ones to them that none of their devices acknowledged, and group ones pending
        for them, SPEC 10).

        `attachments` (ids, SPEC 8) are claimed by the new message in the same transaction, in
        their order; fails with AttachmentRefused (storing nothing) when one is not msg_from's,
        not complete or claimed already. A retry claims nothing.

        `ref` (SPEC 13): the message's reference field as JSON text,
        '{"<field>": {"msg_from": PHONE, "sent_timestamp": TS}}' (protocol.Ref.json), kept with
        it and given back by the reads; None for an ordinary message. For a `delete_of`, the
        same transaction deletes the original (msg_from's message to msg_to whose sent_us is
        the REF's) with its deliveries and attachments, when it is still stored (nothing when
        it is gone already, or stored earlier in the same batch: it is deleted there too). A
        retry deletes nothing more. Raises ValueError, queueing nothing, for a `ref` that is
        not such JSON (see ref_target)."""
        ...

    def ack_personal(self, msg_from: str, msg_to: str, sent_us: int, received_at: str,
                     device: str) -> asyncio.Future[Ack]:
        """Device `device` of msg_to acknowledges `sent_us` of its dialogue with msg_from (SPEC
        7.1, 7.2 `msg_received`): msg_from's message to msg_to waiting for this device, else
        msg_to's own copy of its message to msg_from. The device stops waiting for it; the first
        acknowledgement of msg_from's message by any device of msg_to (Ack.FIRST) also sets
        last_received_receiver of msg_from -> msg_to to `received_at`. The message is deleted
        once acknowledged and no device waits. Ack.MISSING when nothing waits for `device`."""
        ...

    def read_personal(self, msg_from: str, msg_to: str, seen_at: str) -> asyncio.Future[None]:
        """msg_to has seen msg_from's messages (SPEC 5.1 `msg_read`): set last_seen_receiver."""
        ...

    def add_group_message(self, grp: str, msg_from: str, sent_us: int, sent_timestamp: str,
                          message: str, device: str | None = None,
                          attachments: Sequence[str] = (), *,
                          ref: str | None = None) -> asyncio.Future[Stored | None]:
        """Store a group message durably, pending for every other participant (SPEC 5.3), with
        the commit's time as its `accepted_us`, waiting for each of their live devices and, as
        a copy, for each live device of msg_from but `device` (SPEC 7). Resolves to what was
        stored (`pending`: the sorted phones it is pending for), or None for a retry of a
        message still stored; fails with NotMember when msg_from is not a participant.

        A participant whose mailbox is full (`max_waiting` messages already wait for them, SPEC
        10) is left out of the pending list: the others still get the message. When every other
        participant is full, nothing is stored and the write fails with MailboxFull.
        `attachments` and `ref`: as for add_personal (a `delete_of` deletes msg_from's message
        in grp whose sent_us is the REF's, with its pending rows and deliveries)."""
        ...

    def ack_group(self, grp: str, msg_from: str, sent_us: int, phone: str,
                  device: str) -> asyncio.Future[Ack]:
        """Device `device` of `phone` acknowledges msg_from's message in grp (a copy when msg_from
        is `phone`) (SPEC 7.1): the device stops waiting for it; the first acknowledgement by a
        device of `phone` (Ack.FIRST) removes `phone` from the pending list. The message is
        deleted once no one is pending and no device waits. Ack.MISSING when it does not wait
        for `device`."""
        ...

    def read_group(self, grp: str, phone: str, up_to: str) -> asyncio.Future[None]:
        """Move `phone`'s read position in grp forward (never back) to `up_to` (server format)."""
        ...

    def add_room_message(self, room: str, msg_from: str, sent_us: int, sent_timestamp: str,
                         message: str, attachments: Sequence[str] = (), *,
                         ref: str | None = None) -> asyncio.Future[int | None]:
        """Append to a room's history (keeping the latest `[rooms] keep`; what falls out goes
        with its attachments); resolves to the message's id, or None for a retry. `attachments`
        and `ref`: as for add_personal (a `delete_of` deletes msg_from's message in the room
        whose sent_us is the REF's). On PostgreSQL the ids come from one sequence shared by
        every process: they increase in each process's commit order."""
        ...

    # -- attachments (SPEC 8) -----------------------------------------------------------------

    async def reserve_attachment(self, attachment: Attachment, quota_bytes: int) -> None:
        """Record a new upload (not complete, claimed by no message) whose bytes follow with
        `put_attachment_chunk`, in one transaction that checks the owner's quota: raises
        QuotaExceeded, storing nothing, when the owner's attachments (complete or not, claimed
        or not) plus this one's `size` and `thumbnail_size` would pass `quota_bytes`. Uploads
        at once are counted together (one writer; PostgreSQL: the owner's row locked)."""
        ...

    async def put_attachment_chunk(self, attachment_id: str, part: int, n: int, data: bytes) -> None:
        """Store chunk `n` (from 0; each ATTACHMENT_CHUNK bytes but the last) of part `part`
        (FILE_PART, THUMBNAIL_PART) of a reserved upload."""
        ...

    async def complete_attachment(self, attachment_id: str) -> None:
        """Every chunk is stored: the upload may now be attached and downloaded."""
        ...

    async def delete_attachment(self, attachment_id: str) -> None:
        """Delete an upload and its chunks (one that failed half way)."""
        ...

    async def attachments_to_send(self, ids: Sequence[str], owner: str) -> list[Attachment] | None:
        """The attachments `ids`, in that order, when each is `owner`'s, complete and claimed
        by no message (what a new message may carry, SPEC 8); None otherwise."""
        ...

    async def attachment_for(self, attachment_id: str, phone: str, sid_hash: str) -> Attachment | None:
        """The complete attachment `attachment_id` when `phone` may download it (SPEC 8): its
        owner; the recipient of the personal message carrying it; a participant of the group
        of the group message carrying it; for a room message, anyone when the room is public,
        else its creator and a user who gave its password (`sid_hash`, one of that user's login
        sessions; grants are per user since issue 18, defect 7). None
        otherwise, and for an unknown id: the caller answers 404 alike."""
        ...

    async def attachment_chunk(self, attachment_id: str, part: int, n: int) -> bytes | None:
        """Chunk `n` of part `part` of an attachment, or None."""
        ...

    async def drop_unclaimed_attachments(self, before_us: int) -> int:
        """Delete the uploads made before `before_us` that no message claimed (complete or not:
        an upload cut off half way too); how many (SPEC 8, attachments.unclaimed_seconds)."""
        ...

    async def attachment_bytes(self) -> int:
        """The bytes of every stored attachment, thumbnails included (admin stats)."""
        ...

    # -- users and sessions -------------------------------------------------------------------

    async def add_user(self, phone: str, name: str, password_hash: bytes) -> bool:
        """Create an account; False when the phone is taken. The first account of the database is
        an admin (SPEC 10)."""
        ...

    # -- registration, administration, self service (SPEC 10) --------------------------------

    async def has_users(self) -> bool:
        """True once the database holds an account (SPEC 10: until then registration is free)."""
        ...

    async def register_user(self, phone: str, name: str, password_hash: bytes, *, mode: str,
                            invite: str | None = None, admin: bool = False) -> Registered:
        """Create an account as `security.registration` = `mode` ("open", "invite", "closed")
        allows, in ONE transaction: while the database holds no account it is created whatever
        the mode, as an admin; otherwise "closed" refuses, and "invite" takes one use of `invite`
        (uses_left > 0 and not expired) and gives it back when the phone turns out taken. Two
        registrations at once cannot both be the first account, nor both take an invite's last
        use (SQLite: one writer; PostgreSQL: an advisory lock and row locks). `admin` makes the
        account an admin in any case (`run.py adduser --admin`)."""
        ...

    async def account(self, phone: str, max_age_seconds: int) -> Account | None:
        """The account with this phone, or None; `devices` counts its sessions used within the last
        `max_age_seconds`."""
        ...

    async def accounts(self, max_age_seconds: int) -> list[Account]:
        """Every account, by phone (see `account`)."""
        ...

    async def set_account_flags(self, phone: str, *, admin: bool | None = None,
                                disabled: bool | None = None) -> list[str] | None:
        """Grant or revoke admin, disable or enable an account (None: unchanged), in one
        transaction. Disabling deletes every session of the account; returns the session hashes
        deleted (their sockets are the caller's to close), or None for an unknown phone. Raises
        LastAdmin when the account is the last enabled admin and other accounts exist."""
        ...

    async def update_profile(self, phone: str, *, name: str | None = None,
                             hide_presence: bool | None = None) -> bool:
        """Set the display name and/or the hide_presence setting (None: unchanged); False for
        an unknown phone."""
        ...

    async def change_password(self, phone: str, password_hash: bytes,
                              keep_session: str | None) -> list[str] | None:
        """Replace a password and delete every session of the account but `keep_session` (a
        session hash; None: all), in one transaction; the hashes deleted, or None for an unknown
        phone (SPEC 10: a password change ends the other devices)."""
        ...

    async def delete_account(self, phone: str) -> list[str] | None:
        """Delete an account as `delete_user` does; the hashes of the sessions it had, or None
        for an unknown phone. Raises LastAdmin (and deletes nothing) when it is the last enabled
        admin and other accounts exist."""
        ...

    async def create_invite(self, code: str, created_by: str | None, uses: int,
                            expires_us: int) -> bool:
        """Record an invite with `uses` uses until `expires_us`; False when the code exists.
        Invites that expired more than INVITE_KEEP_US ago are dropped on the way."""
        ...

    async def invite(self, code: str) -> Invite | None:
        """The invite with this code (live or not), or None."""
        ...

    async def invites(self, now_us: int) -> list[Invite]:
        """The live invites (a use left, not expired at `now_us`), oldest first."""
        ...

    async def revoke_invite(self, code: str) -> bool:
        """Delete an invite; False when there is none with this code."""
        ...

    async def stats(self, max_age_seconds: int) -> Stats:
        """Counts for the admin page; `devices`: sessions used within the last `max_age_seconds`."""
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

    async def upgrade_password_hash(self, phone: str, old_hash: bytes, new_hash: bytes) -> bool:
        """Replace the account's password hash by `new_hash` (the same password in a newer
        format, auth.needs_upgrade) only while it is still `old_hash`, in one statement, and end
        no session; False, changing nothing, when the phone is unknown or the hash was changed
        meanwhile (a `passwd` or a password change that must win)."""
        ...

    async def delete_user(self, phone: str) -> bool:
        """Delete an account with its sessions, dialogues, blocks and stored messages; False if
        unknown."""
        ...

    async def add_session(self, sid_hash: str, phone: str, label: str = UNKNOWN_DEVICE, *,
                          token: bool = False) -> str:
        """Record a login (SPEC 4: the cookie names a session the server records) or, with
        `token`, a client token (SPEC 12: `sid_hash` is the SHA-256 of the token; it does not
        expire by inactivity) as a new
        device (SPEC 7) with this `label`, created and last used now; returns the device's new
        random id. In the same transaction the new device starts waiting for every message still
        stored for `phone` as a recipient (personal ones to it, group ones it is pending for or
        another of its devices waits for), but for no copy of what `phone` sent before (SPEC
        7.1, 7.2). Raises IntegrityError for an unknown phone (or, with odds of 2**-96, an id
        taken)."""
        ...

    async def delete_session(self, sid_hash: str) -> None:
        """Forget a login, so that a replayed cookie is refused."""
        ...

    async def session_user(self, sid_hash: str, max_age_seconds: int, *,
                           token: bool = False) -> str | None:
        """The phone logged in under this session, or None when unknown or not used within the
        last `max_age_seconds` (SPEC 7). With `token`, the phone of the client token whose
        SHA-256 is `sid_hash` (SPEC 12; never expired by age); a token is not a cookie session
        and a cookie session is not a token (None). Asking is a use: a last use recorded longer
        ago than `touch_after_us(max_age_seconds)` is set to now (one conditional UPDATE)."""
        ...

    async def live_sessions(self, sid_hashes: Collection[str], max_age_seconds: float) -> set[str]:
        """Of `sid_hashes`, those still recorded, used within the last `max_age_seconds` (or
        tokens, which do not expire by inactivity: SPEC 12) and of
        an account not disabled (SPEC 10: a disabled user's devices end): what a
        server process asks every `security.session_check_seconds` about the sessions of its open
        sockets, so that a session ended anywhere (logout, `run.py passwd` or `deluser` in another
        process, an admin, expiry) closes its sockets (issue 12). An open socket is a use (SPEC
        7): of the live ones, those whose last use was recorded longer ago than
        `touch_after_us(max_age_seconds)` are set to now, in one UPDATE per batch (none when
        every one is recent). One query (SQLite: the hashes as one JSON array read by
        json_each; PostgreSQL: one text[] parameter) per LIVE_SESSIONS_BATCH hashes; an empty
        collection asks nothing and is an empty set."""
        ...

    async def devices(self, phone: str, current: str | None, max_age_seconds: int) -> list[Device]:
        """SPEC 7 `GET /chat/devices`: the live sessions of `phone` (used within the last
        `max_age_seconds`, and its tokens, SPEC 12), newest first (by creation, then id);
        `current` is the asking session's hash (its device has current=True)."""
        ...

    async def delete_device(self, phone: str, device_id: str) -> str | None:
        """SPEC 7 `DELETE /chat/devices`: delete the session of `phone` whose device id is
        `device_id`; its session hash (the caller closes its sockets), or None, deleting nothing,
        when `phone` has no such device (another user's id included)."""
        ...

    # -- Web Push (SPEC 9) --------------------------------------------------------------------

    async def set_push_subscription(self, sid_hash: str, endpoint: str, p256dh: str,
                                    auth: str) -> bool:
        """Record the push subscription of the device whose session hash is `sid_hash`,
        replacing its earlier one (a device has at most one), in one transaction; any other
        device's subscription with the same `endpoint` is deleted (an endpoint is one browser's:
        a browser where another account logged in since gets no push of the first). False,
        storing nothing, when the session no longer exists. The values are stored as given
        (the HTTP layer checks them)."""
        ...

    async def delete_push_subscription(self, sid_hash: str) -> bool:
        """Delete the device's subscription; True when it had one."""
        ...

    async def push_subscription(self, sid_hash: str) -> PushSubscription | None:
        """The device's subscription (`conversation` ""), or None."""
        ...

    async def drop_push_subscription(self, sid_hash: str, endpoint: str) -> bool:
        """Delete the device's subscription only while it still has `endpoint` (the push service
        answered 404 or 410 for it, SPEC 9; the device may have subscribed anew meanwhile);
        True when one was deleted."""
        ...

    async def push_targets(self, wanted: Sequence[tuple[str, str]],
                           now_us: int) -> list[PushSubscription]:
        """The subscriptions to push to for `wanted`, (phone, conversation) pairs: for each pair
        (a repeated pair counts once), in `wanted`'s order, the subscription of each live device
        of that phone (a session used within `security.session_seconds` by the store's clock,
        or a token, of an account not disabled, as `live_sessions`), by device, with `conversation` set to
        the pair's; none for a pair whose phone has muted that conversation with until_us >
        `now_us` (microseconds). A device is listed once per pair it answers: the same phone
        in two pairs of a batch gives its devices twice, with each conversation. One query for
        the whole list (SQLite: a JSON array read by json_each; PostgreSQL: two text[]
        parameters); an empty list asks nothing."""
        ...

    async def set_mute(self, phone: str, conversation: str, until_us: int | None) -> None:
        """Mute `conversation` for every device of `phone` until `until_us` (microseconds;
        replacing an earlier time), or unmute it (None: its row deleted) (SPEC 9). Mutes of
        `phone` whose time has passed are dropped on the way. Raises ValueError, changing
        nothing, when `phone` already has MAX_MUTES mutes in force and this conversation is not
        one of them; IntegrityError for an unknown phone (a mute, not an unmute). The shape of
        `conversation` is the caller's to check."""
        ...

    async def mutes(self, phone: str, now_us: int) -> list[tuple[str, int]]:
        """(conversation, until_us) of `phone`'s mutes still in force at `now_us` (until_us >
        now_us), by conversation."""
        ...

    async def waiting_count(self, device: str, phone: str, conversation: str) -> int:
        """How many messages wait for `device` (a session hash) of `phone` in `conversation`
        (SPEC 9's push `count`): for "personal:SENDER", SENDER's messages to `phone` waiting for
        the device; for "group:KEY", the group's messages by others than `phone` waiting for
        the device (copies of `phone`'s own, SPEC 7.2, are not counted); 0 for any other
        conversation."""
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
        """Personal messages stored for msg_to that no device of msg_to has acknowledged yet
        (SPEC 7.1), in the order the server accepted them (SPEC 5.2)."""
        ...

    async def pending_page(self, device: str, after: int,
                           limit: int) -> list[tuple[int, StoredMessage]]:
        """At most `limit` personal messages (and copies of one's own, SPEC 7.2) waiting for the
        device whose session hash is `device`, in acceptance order, starting after the one whose
        position is `after` (0: from the first): (position, message) pairs. The next page starts
        after the last position returned (keyset pagination: each page is one indexed query
        whatever the backlog, and memory is bounded by `limit`)."""
        ...

    async def drop_expired_sessions(self, max_age_seconds: float) -> int:
        """Delete the cookie sessions not used within the last `max_age_seconds` (SPEC 7: expired
        devices; a token never expires, SPEC 12), with what waited for them only (a message no
        other device waits for and its recipient never acknowledged stays for their next
        device); how many were deleted."""
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

    async def pending_group_page(self, device: str, after: int,
                                 limit: int) -> list[tuple[int, GroupMessage]]:
        """The group messages (and copies of one's own) waiting for the device whose session
        hash is `device`, a page at a time as `pending_page`: at most `limit` (position, message)
        pairs, oldest first, after position `after` (0: from the first)."""
        ...

    # -- retention (SPEC 10) ------------------------------------------------------------------

    async def expire(self, before_us: int, limit: int) -> list[Expired]:
        """Delete at most `limit` personal and at most `limit` group messages (with their pending
        rows) accepted before `before_us`, oldest first, in one transaction, and return them; the
        store scrubs their bodies as it does acknowledged ones (SPEC 6). Several processes may
        call it at once on one database: each message is returned by exactly one call (the one
        whose DELETE removed it). Call again while a call returns `limit` of either kind. A message
        every recipient had acknowledged (only a device's copy or a second device still waited)
        comes back with `delivered` True."""
        ...

    # -- rooms (SPEC 5.4) ---------------------------------------------------------------------

    async def create_room(self, name: str, created_by: str, password_hash: bytes | None,
                          category: str | None = None) -> bool:
        """Create a room (private when it has a password hash) in `category` (SPEC 13; None:
        none; the caller checks its shape); False when the name is taken."""
        ...

    async def search_rooms(self, q: str, category: str | None, limit: int) -> list[Room]:
        """SPEC 13 `GET /chat/rooms`: at most `limit` rooms, private ones included, whose name
        contains `q` ignoring ASCII case ("" matches every name; `%`, `_` and `\\` are plain
        characters), in `category` when it is not None (equal, case and all), newest first
        (by creation time, then name)."""
        ...

    async def delete_room(self, name: str, created_by: str) -> bool:
        """SPEC 13: close room `name` if `created_by` created it: delete it with its history,
        their attachments, the sessions' grants, the users' saved rows (all by cascade) and
        the mutes of "room:NAME", in one transaction; its bodies are scrubbed as acknowledged
        messages' are (SPEC 6). False, deleting nothing, when there is no such room or another
        user created it (the caller tells which apart beforehand)."""
        ...

    async def save_room(self, phone: str, room: str) -> bool:
        """SPEC 13 `PUT /chat/rooms/saved`: `phone` saves `room` (idempotent: saving it again
        changes nothing). False, saving nothing, when there is no such room; raises ValueError,
        saving nothing, when `phone` has MAX_SAVED_ROOMS rooms saved and this is not one of
        them; IntegrityError for an unknown phone."""
        ...

    async def unsave_room(self, phone: str, room: str) -> bool:
        """`phone` no longer saves `room`; True when it had."""
        ...

    async def saved_rooms(self, phone: str) -> list[str]:
        """The names of the rooms `phone` has saved, sorted (SPEC 13 `/chat/info` `saved_rooms`)."""
        ...

    async def room(self, name: str) -> Room | None:
        """The room with this name, or None."""
        ...

    async def rooms(self) -> list[Room]:
        """Every room, by name."""
        ...

    async def rooms_for(self, phone: str, sid_hash: str, newest_public: int) -> list[Room]:
        """The rooms `phone` is shown in /chat/info (issue 12, finding 6), by name: those it
        created, the private rooms its user (login session `sid_hash`) has given the password for, and the
        `newest_public` most recently created public rooms. Other private rooms are left out."""
        ...

    async def room_history(self, room: str, limit: int) -> list[RoomMessage]:
        """The latest `limit` messages of a room, oldest first."""
        ...

    async def grant_room(self, sid_hash: str, room: str) -> None:
        """Remember that the user of login session `sid_hash` gave a private room's password: every
        session of that user, later ones too, is let in (issue 18, defect 7: no password again
        after each login; the client never keeps the password to send it again)."""
        ...

    async def room_granted(self, sid_hash: str, room: str) -> bool:
        """True when the user of this login session has given the room's password (from any of
        their sessions)."""
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
