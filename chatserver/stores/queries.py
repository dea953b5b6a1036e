"""The SQL both engines share, written once, and the reads and rare writes made of it.

Each query is written once with PostgreSQL's numbered placeholders ($1, $2...); SQLite's engine
uses the same text with ?1, ?2... (`for_sqlite`), which SQLite binds by number as well. What
really differs per engine (the batch runners, `pending_group_for`, `update_group`) stays in the
engine's module.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from abc import abstractmethod
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from ..protocol import now_micros
from .base import (
    LIVE_SESSIONS_BATCH,
    MAX_MUTES,
    MAX_SAVED_ROOMS,
    UNKNOWN_DEVICE,
    Account,
    Ack,
    Attachment,
    Contact,
    Device,
    DialogueSide,
    Expired,
    Group,
    Invite,
    LastAdmin,
    MailboxFull,
    PushSubscription,
    QuotaExceeded,
    Registered,
    Room,
    RoomMessage,
    Stats,
    StoredMessage,
    User,
    touch_after_us,
)
from .groupcommit import DB, GroupCommitStore

# An invite is kept this long after it expired (so that its code is answered "expired", not
# "unknown"), then dropped when the next invite is made.
INVITE_KEEP_US: Final = 30 * 86_400 * 1_000_000
# SPEC 10 `GET /chat/admin/users`: devices are live sessions (used since $1, SPEC 7, or tokens,
# which do not expire by inactivity: SPEC 12), waiting is what is stored for them.
_ACCOUNT: Final = (
    "SELECT u.phone, u.name, u.admin, u.disabled, u.hide_presence, u.created_us, u.last_seen_us,"
    " (SELECT count(*) FROM sessions AS s WHERE s.phone = u.phone"
    "  AND (s.last_used_us > $1 OR s.kind = 'token')),"
    " (SELECT count(*) FROM personal_messages AS p WHERE p.msg_to = u.phone AND NOT p.acked)"
    " + (SELECT count(*) FROM group_pending AS g WHERE g.phone = u.phone)"
    " FROM users AS u")
_INVITE: Final = "SELECT code, created_by, uses, uses_left, created_us, expires_us FROM invites"
# The columns of a Room record, in its fields' order.
ROOM_COLUMNS: Final = "name, created_by, password_hash, category"


def _kind(token: bool) -> str:
    """The `sessions.kind` of a client token (SPEC 12) or of a browser login (migration 0008)."""
    return "token" if token else "cookie"


@dataclass(frozen=True, slots=True)
class Queries:
    """One SQL text per shared query, in one engine's placeholder style."""

    add_user: str = ("INSERT INTO users (phone, name, password_hash, created_us, admin)"
                     " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (phone) DO NOTHING")
    has_users: str = "SELECT 1 FROM users LIMIT 1"
    # One use of a live invite; its row lock makes parallel registrations take turns (PostgreSQL
    # re-checks the WHERE on the row another transaction just changed).
    take_invite: str = ("UPDATE invites SET uses_left = uses_left - 1"
                        " WHERE code = $1 AND uses_left > 0 AND expires_us > $2")
    give_back_invite: str = "UPDATE invites SET uses_left = uses_left + 1 WHERE code = $1"
    account: str = _ACCOUNT + " WHERE u.phone = $2"
    accounts: str = _ACCOUNT + " ORDER BY u.phone"
    enabled_admins: str = "SELECT phone FROM users WHERE admin AND NOT disabled ORDER BY phone"
    other_user: str = "SELECT 1 FROM users WHERE phone <> $1 LIMIT 1"
    user_flags: str = "SELECT admin, disabled FROM users WHERE phone = $1"
    set_admin: str = "UPDATE users SET admin = $1 WHERE phone = $2"
    set_disabled: str = "UPDATE users SET disabled = $1 WHERE phone = $2"
    set_name: str = "UPDATE users SET name = $1 WHERE phone = $2"
    set_hide_presence: str = "UPDATE users SET hide_presence = $1 WHERE phone = $2"
    take_sessions: str = "DELETE FROM sessions WHERE phone = $1 RETURNING sid_hash"
    take_other_sessions: str = ("DELETE FROM sessions WHERE phone = $1 AND sid_hash <> $2"
                                " RETURNING sid_hash")
    create_invite: str = ("INSERT INTO invites (code, created_by, uses, uses_left, created_us, expires_us)"
                          " VALUES ($1, $2, $3, $3, $4, $5) ON CONFLICT DO NOTHING")
    drop_old_invites: str = "DELETE FROM invites WHERE expires_us < $1"
    invite: str = _INVITE + " WHERE code = $1"
    invites: str = _INVITE + " WHERE uses_left > 0 AND expires_us > $1 ORDER BY created_us, code"
    revoke_invite: str = "DELETE FROM invites WHERE code = $1"
    stats: str = ("SELECT (SELECT count(*) FROM users),"
                  " (SELECT count(*) FROM sessions WHERE last_used_us > $1 OR kind = 'token'),"
                  " (SELECT count(*) FROM personal_messages) + (SELECT count(*) FROM group_messages)")
    get_user: str = "SELECT phone, name, password_hash FROM users WHERE phone = $1"
    user_exists: str = "SELECT 1 FROM users WHERE phone = $1"
    set_password: str = "UPDATE users SET password_hash = $1 WHERE phone = $2"
    upgrade_password_hash: str = ("UPDATE users SET password_hash = $1"
                                  " WHERE phone = $2 AND password_hash = $3")
    end_sessions: str = "DELETE FROM sessions WHERE phone = $1"
    delete_user: str = "DELETE FROM users WHERE phone = $1"
    # $6: 'cookie' or 'token' (SPEC 12, migration 0008).
    add_session: str = ("INSERT INTO sessions (sid_hash, phone, created_us, id, label, last_used_us, kind)"
                        " VALUES ($1, $2, $3, $4, $5, $3, $6)")
    delete_session: str = "DELETE FROM sessions WHERE sid_hash = $1"
    # A session of kind $3 used since $2; a token (SPEC 12) is live whenever it was last used.
    session_user: str = ("SELECT phone, last_used_us FROM sessions WHERE sid_hash = $1 AND kind = $3"
                         " AND (last_used_us > $2 OR kind = 'token')")
    # SPEC 7: a use. Only when the recorded one is older than $3 (another request or process may
    # have recorded it meanwhile) and the session has not expired meanwhile ($4; a token never does).
    touch_session: str = ("UPDATE sessions SET last_used_us = $2 WHERE sid_hash = $1"
                          " AND last_used_us < $3 AND (last_used_us > $4 OR kind = 'token')")
    # SPEC 7 `GET /chat/devices`, newest first: the cookie sessions used since $3, and the tokens.
    devices: str = ("SELECT id, label, created_us, last_used_us, sid_hash = $2 FROM sessions"
                    " WHERE phone = $1 AND (last_used_us > $3 OR kind = 'token')"
                    " ORDER BY created_us DESC, id DESC")
    delete_device: str = "DELETE FROM sessions WHERE phone = $1 AND id = $2 RETURNING sid_hash"
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
        " (SELECT count(*) FROM personal_messages WHERE msg_from = $1 AND msg_to = $2 AND NOT acked)")
    pending_for: str = ("SELECT msg_from, msg_to, message, sent_us, ref FROM personal_messages"
                        " WHERE msg_to = $1 AND NOT acked ORDER BY id")
    # What waits for one device (SPEC 7.1): its user's messages (to it, and its own for the
    # copies) that have the device's row, a page at a time (keyset pagination on id).
    pending_page: str = ("SELECT p.id, p.msg_from, p.msg_to, p.message, p.sent_us, p.ref"
                         " FROM sessions AS s JOIN personal_messages AS p"
                         " ON p.msg_to = s.phone OR p.msg_from = s.phone"
                         " JOIN personal_deliveries AS d ON d.message_id = p.id AND d.sid_hash = s.sid_hash"
                         " WHERE s.sid_hash = $1 AND p.id > $2 ORDER BY p.id LIMIT $3")
    # SPEC 7.1: a new device $1 of $2 waits for what is still stored for $2 as a recipient: its
    # personal messages (copies of its own are not: msg_to is the peer), the group messages it
    # is pending for, and those another of its devices still waits for (not its own: 7.2).
    deliver_stored_personal: str = ("INSERT INTO personal_deliveries (sid_hash, message_id)"
                                    " SELECT $1, id FROM personal_messages WHERE msg_to = $2"
                                    " ON CONFLICT DO NOTHING")
    deliver_stored_group: str = (
        "INSERT INTO group_deliveries (sid_hash, message_id)"
        " SELECT $1, message_id FROM group_pending WHERE phone = $2"
        " UNION SELECT $1, d.message_id FROM group_deliveries AS d"
        " JOIN sessions AS s ON s.sid_hash = d.sid_hash"
        " JOIN group_messages AS m ON m.id = d.message_id"
        " WHERE s.phone = $2 AND m.msg_from <> $2"
        " ON CONFLICT DO NOTHING")
    # SPEC 7: a cookie session unused since $1 has expired; a token (SPEC 12) never expires.
    drop_expired_sessions: str = "DELETE FROM sessions WHERE last_used_us <= $1 AND kind = 'cookie'"
    # SPEC 8. A new upload, only while its owner's attachments and it fit in the quota ($10).
    # The CASTs give PostgreSQL one type per parameter (the sum is numeric, the columns are not:
    # it refuses to guess), and are plain SQL for SQLite.
    reserve_attachment: str = (
        "INSERT INTO attachments (id, owner, name, content_type, size, width, height, thumbnail_size,"
        " created_us) SELECT $1, $2, $3, $4, CAST($5 AS BIGINT), $6, $7, CAST($8 AS INTEGER), $9"
        " WHERE (SELECT coalesce(sum(size + coalesce(thumbnail_size, 0)), 0) FROM attachments"
        "        WHERE owner = $2) + CAST($5 AS BIGINT) + coalesce(CAST($8 AS INTEGER), 0)"
        " <= CAST($10 AS BIGINT)")
    put_attachment_chunk: str = ("INSERT INTO attachment_chunks (attachment_id, part, n, data)"
                                 " VALUES ($1, $2, $3, $4)")
    complete_attachment: str = "UPDATE attachments SET complete = true WHERE id = $1"
    delete_attachment: str = "DELETE FROM attachments WHERE id = $1"
    # Who may download (SPEC 8): see Store.attachment_for. Group: a participant now (one who
    # left no longer may); room: any user for a public room, else its creator or a user who
    # gave its password (room_grants, migration 0010), found from the session $3.
    attachment_for: str = (
        "SELECT a.id, a.owner, a.name, a.content_type, a.size, a.width, a.height, a.thumbnail_size"
        " FROM attachments AS a WHERE a.id = $1 AND a.complete AND (a.owner = $2"
        " OR EXISTS (SELECT 1 FROM personal_messages AS p WHERE p.id = a.personal_id AND p.msg_to = $2)"
        " OR EXISTS (SELECT 1 FROM group_messages AS g JOIN group_members AS m"
        "            ON m.grp = g.grp AND m.phone = $2 WHERE g.id = a.group_id)"
        " OR EXISTS (SELECT 1 FROM room_messages AS r JOIN rooms AS o ON o.name = r.room"
        "            WHERE r.id = a.room_id AND (o.password_hash IS NULL OR o.created_by = $2"
        "            OR EXISTS (SELECT 1 FROM room_grants AS g JOIN sessions AS s ON s.phone = g.phone"
        "                       WHERE s.sid_hash = $3 AND g.room = o.name))))")
    attachment_chunk: str = ("SELECT data FROM attachment_chunks"
                             " WHERE attachment_id = $1 AND part = $2 AND n = $3")
    drop_unclaimed_attachments: str = (
        "DELETE FROM attachments WHERE created_us < $1"
        " AND personal_id IS NULL AND group_id IS NULL AND room_id IS NULL")
    attachment_bytes: str = "SELECT coalesce(sum(size + coalesce(thumbnail_size, 0)), 0) FROM attachments"
    # SPEC 9. The device's one subscription, made from its session's row (none: no row). CAST:
    # PostgreSQL takes an untyped parameter of a SELECT list for text.
    set_push_subscription: str = (
        "INSERT INTO push_subscriptions (sid_hash, phone, endpoint, p256dh, auth, created_us)"
        " SELECT sid_hash, phone, $2, $3, $4, CAST($5 AS BIGINT) FROM sessions WHERE sid_hash = $1"
        " ON CONFLICT (sid_hash) DO UPDATE SET endpoint = excluded.endpoint,"
        " p256dh = excluded.p256dh, auth = excluded.auth, created_us = excluded.created_us")
    # An endpoint is one browser's: another device's row with it goes first (unique index).
    drop_endpoint_elsewhere: str = ("DELETE FROM push_subscriptions"
                                    " WHERE endpoint = $2 AND sid_hash <> $1"
                                    " AND EXISTS (SELECT 1 FROM sessions WHERE sid_hash = $1)")
    delete_push_subscription: str = "DELETE FROM push_subscriptions WHERE sid_hash = $1"
    push_subscription: str = ("SELECT sid_hash, phone, endpoint, p256dh, auth FROM push_subscriptions"
                              " WHERE sid_hash = $1")
    drop_push_subscription: str = ("DELETE FROM push_subscriptions"
                                   " WHERE sid_hash = $1 AND endpoint = $2")
    drop_past_mutes: str = "DELETE FROM mutes WHERE phone = $1 AND until_us <= $2"
    # A new conversation only while fewer than $4 (MAX_MUTES) rows are left; an existing one's
    # time is replaced whatever the count. CAST: one type per parameter for PostgreSQL.
    set_mute: str = (
        "INSERT INTO mutes (phone, conversation, until_us) SELECT $1, $2, CAST($3 AS BIGINT)"
        " WHERE EXISTS (SELECT 1 FROM mutes WHERE phone = $1 AND conversation = $2)"
        " OR (SELECT count(*) FROM mutes WHERE phone = $1) < $4"
        " ON CONFLICT (phone, conversation) DO UPDATE SET until_us = excluded.until_us")
    unmute: str = "DELETE FROM mutes WHERE phone = $1 AND conversation = $2"
    mutes: str = ("SELECT conversation, until_us FROM mutes WHERE phone = $1 AND until_us > $2"
                  " ORDER BY conversation")
    # SPEC 9's `count`: what waits for device $1 of $2 from $3 (personal) or in group $3 by
    # others (group), on the identity index and the deliveries' primary keys.
    waiting_personal: str = (
        "SELECT count(*) FROM personal_messages AS p WHERE p.msg_to = $2 AND p.msg_from = $3"
        " AND EXISTS (SELECT 1 FROM personal_deliveries AS d"
        "             WHERE d.message_id = p.id AND d.sid_hash = $1)")
    waiting_group: str = (
        "SELECT count(*) FROM group_deliveries AS d JOIN group_messages AS m ON m.id = d.message_id"
        " WHERE d.sid_hash = $1 AND m.grp = $3 AND m.msg_from <> $2")
    is_stored: str = ("SELECT 1 FROM personal_messages"
                      " WHERE msg_to = $1 AND msg_from = $2 AND sent_us = $3")
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
    create_room: str = ("INSERT INTO rooms (name, created_by, password_hash, created_us, category)"
                        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING")
    room: str = f"SELECT {ROOM_COLUMNS} FROM rooms WHERE name = $1"
    rooms: str = f"SELECT {ROOM_COLUMNS} FROM rooms ORDER BY name"
    # SPEC 13 `GET /chat/rooms`: $1 a LIKE pattern of lower-case text with `\` escaping (see
    # `like_pattern`), $2 a category or NULL, $3 how many; newest first (index rooms_created).
    # CAST: one type for $2 in both of its places (PostgreSQL).
    search_rooms: str = (
        f"SELECT {ROOM_COLUMNS} FROM rooms WHERE lower(name) LIKE $1 ESCAPE '\\'"
        " AND (CAST($2 AS TEXT) IS NULL OR category = CAST($2 AS TEXT))"
        " ORDER BY created_us DESC, name LIMIT $3")
    # SPEC 13: the creator closes a room; what hangs on it goes by cascade (history,
    # attachments, grants, saved rows); a mute names it only in text (SPEC 9 "room:NAME").
    delete_room: str = "DELETE FROM rooms WHERE name = $1 AND created_by = $2"
    drop_room_mutes: str = "DELETE FROM mutes WHERE conversation = $1"
    room_exists: str = "SELECT 1 FROM rooms WHERE name = $1"
    # A room not saved yet only while fewer than $4 (MAX_SAVED_ROOMS) are; saving one already
    # saved is a change of nothing (counted as a row, so that 0 means "too many").
    save_room: str = (
        "INSERT INTO saved_rooms (phone, room, saved_us) SELECT $1, $2, CAST($3 AS BIGINT)"
        " WHERE EXISTS (SELECT 1 FROM saved_rooms WHERE phone = $1 AND room = $2)"
        " OR (SELECT count(*) FROM saved_rooms WHERE phone = $1) < $4"
        " ON CONFLICT (phone, room) DO UPDATE SET saved_us = saved_rooms.saved_us")
    unsave_room: str = "DELETE FROM saved_rooms WHERE phone = $1 AND room = $2"
    saved_rooms: str = "SELECT room FROM saved_rooms WHERE phone = $1 ORDER BY room"
    # Issue 12, finding 6: the rooms one user is shown (see Store.rooms_for).
    rooms_for: str = (
        f"SELECT {ROOM_COLUMNS} FROM rooms WHERE created_by = $1"
        " OR (password_hash IS NOT NULL AND name IN (SELECT g.room FROM room_grants AS g"
        "     JOIN sessions AS s ON s.phone = g.phone WHERE s.sid_hash = $2))"
        " OR name IN (SELECT name FROM rooms WHERE password_hash IS NULL"
        "             ORDER BY created_us DESC, name LIMIT $3)"
        " ORDER BY name")
    room_history: str = (
        "SELECT id, msg_from, message, sent_us, ref FROM (SELECT id, msg_from, message, sent_us,"
        " ref FROM room_messages WHERE room = $1 ORDER BY id DESC LIMIT $2) AS h ORDER BY id")
    # Issue 18, defect 7: a private room's password is given once per USER (migration 0010),
    # reached from the session that gave it: every later login of that user is let in.
    grant_room: str = ("INSERT INTO room_grants (phone, room)"
                       " SELECT phone, $2 FROM sessions WHERE sid_hash = $1 ON CONFLICT DO NOTHING")
    room_granted: str = ("SELECT 1 FROM room_grants AS g JOIN sessions AS s ON s.phone = g.phone"
                         " WHERE s.sid_hash = $1 AND g.room = $2")
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


def admit(recipients: Iterable[str], waiting: dict[str, int], limit: int) -> list[bool]:
    """For each recipient of a batch's new messages, in order: True while fewer than `limit`
    messages wait for them (`waiting`: counted before the batch, updated here as messages are
    admitted), False once their mailbox is full (SPEC 10, limits.max_waiting_per_recipient)."""
    admitted = []
    for phone in recipients:
        n = waiting.get(phone, 0)
        if n < limit:
            waiting[phone] = n + 1
        admitted.append(n < limit)
    return admitted


def claims(rows: Iterable[Sequence[Any]], ids: Mapping[tuple[Any, ...], int], *, owner: int,
           attachments: int) -> list[list[Any]]:
    """The attachments new messages claim (SPEC 8): for each row of a batch whose identity (its
    first three fields) is in `ids` (new message id by identity; a repeated identity's first row
    only), [message id, attachment id, position, the row's field `owner`] per id of its field
    `attachments`."""
    left = dict(ids)
    out: list[list[Any]] = []
    for row in rows:
        message_id = left.pop((row[0], row[1], row[2]), None)
        if message_id is not None:
            out.extend([message_id, a, position, row[owner]] for position, a in enumerate(row[attachments]))
    return out


def unsent(rows: Iterable[Sequence[Any]], stored: Iterable[tuple[Any, ...]], conversation: int,
           sender: int) -> list[list[Any]]:
    """SPEC 13: the originals the new delete_of messages of a batch take back: for each row
    whose identity (its first three fields) is in `stored` (the new ones, not retries, not
    refused) and whose last field names an original (its sent_us), [conversation, sender,
    sent_us] from the row's fields `conversation` and `sender`; a row never deletes itself."""
    new = set(stored)
    return [[row[conversation], row[sender], row[-1]] for row in rows
            if row[-1] is not None and row[-1] != row[2] and (row[0], row[1], row[2]) in new]


def identity_counts(rows: Sequence[Sequence[Any]]) -> list[int]:
    """For each row of a batch of acknowledgements, how many rows of the batch name its message
    identity (msg_from, msg_to, sent_us, the first three fields) in either direction: a row
    alone with its identity may take the one-statement way (its device's only row)."""
    counts: dict[tuple[Any, ...], int] = {}
    keys = [(min(r[0], r[1]), max(r[0], r[1]), r[2]) for r in rows]
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    return [counts[key] for key in keys]


def take_once(candidates: Iterable[int | None], device: str,
              claimed: set[tuple[str, int]]) -> int | None:
    """The first of `candidates` (message ids, None: none) that `device` has not acknowledged yet
    in this batch (`claimed`, updated), or None: the same message acknowledged twice by one device
    in a batch counts once, and the same identity twice is the peer's message the first time and
    the device's copy the second (SPEC 7.2)."""
    for message_id in candidates:
        if message_id is not None and (device, message_id) not in claimed:
            claimed.add((device, message_id))
            return message_id
    return None


@dataclass(frozen=True, slots=True)
class PersonalWaiting:
    """A personal message waiting for the device that acknowledges it (SPEC 7.1): its id,
    whether its recipient acknowledged it already, whether another device waits for it, and
    whether it is the device's copy of its own user's message (SPEC 7.2)."""

    id: int
    acked: bool
    others: bool
    copy: bool


class AckPlan:
    """What a batch of personal acknowledgements [msg_from, msg_to, sent_us, received_at, device]
    does, worked out once for both engines (SPEC 7.1, 7.2).

    Each acknowledgement takes the peer's message waiting for its device (`peers`, by row),
    else that device's copy of the user's own (`add_copies`, asked only when `copies_wanted`):
    the same identity twice in a batch is the peer's message the first time, the copy the
    second. Then `plan()` says, per message:
    - `delete`: the only acknowledgement of it in the batch, no other device waits, and it is
      the recipient's (or the recipient had it already): the message goes at once, its one row
      with it (the usual case: one device, no copies; one statement);
    - `mark`: the recipient's acknowledgement while other devices wait: `acked` set, the
      statement's RETURNING (under the row's lock) telling which one was the first;
    - `undeliver`: every other claimed (device, id) pair; trigger personal_deliveries_last
      deletes what is acknowledged with no device left.
    """

    def __init__(self, rows: list[Any], peers: Mapping[int, PersonalWaiting]) -> None:
        self._rows = rows
        self._claimed: set[tuple[str, int]] = set()
        self._taken: list[PersonalWaiting | None] = [self._take(k, peers.get(k)) for k in range(len(rows))]
        self.copies_wanted = None in self._taken
        self._alone: list[bool] = []
        self.delete: list[int] = []
        self.mark: list[int] = []
        self.undeliver: list[tuple[str, int]] = []

    def _take(self, k: int, found: PersonalWaiting | None) -> PersonalWaiting | None:
        if found is None or take_once((found.id,), self._rows[k][4], self._claimed) is None:
            return None
        return found

    def add_copies(self, copies: Mapping[int, PersonalWaiting]) -> None:
        """The copies waiting for the rows' devices (for rows that found no peer message)."""
        self._taken = [t if t is not None else self._take(k, copies.get(k))
                       for k, t in enumerate(self._taken)]

    def plan(self) -> AckPlan:
        """Fill `delete`, `mark` and `undeliver` from what the rows took; returns self."""
        counts: dict[int, int] = {}
        for t in self._taken:
            if t is not None:
                counts[t.id] = counts.get(t.id, 0) + 1
        marked: set[int] = set()
        for row, t in zip(self._rows, self._taken, strict=True):
            # `t` goes with this acknowledgement: nothing else waits, and its recipient had it
            alone = t is not None and counts[t.id] == 1 and not t.others and (t.acked or not t.copy)
            self._alone.append(alone)
            if t is None:
                continue
            if alone:
                self.delete.append(t.id)
                continue
            if not t.copy and not t.acked:
                marked.add(t.id)
            self.undeliver.append((row[4], t.id))
        self.mark = sorted(marked)
        self.undeliver.sort()
        return self

    def results(self, marked: set[int], deleted: set[int]) -> tuple[list[Ack], list[Any]]:
        """Each row's Ack and the rows whose receipt is due, given the ids `mark` did mark (its
        RETURNING) and those `delete` did delete."""
        results: list[Ack] = []
        receipts = []
        for row, t, alone in zip(self._rows, self._taken, self._alone, strict=True):
            if t is None:
                results.append(Ack.MISSING)
                continue
            first = not t.copy and not t.acked and t.id in (deleted if alone else marked)
            if first:
                marked.discard(t.id)  # two devices of the recipient in one batch: one receipt
                receipts.append(row)
            results.append(Ack.FIRST if first else Ack.LATER)
        return results, receipts


def mailbox_full() -> MailboxFull:
    """What a refused write gets; its text is the error frame's (SPEC 10)."""
    return MailboxFull("recipient's mailbox is full")


def expired(rows: Iterable[Any], group: bool) -> list[Expired]:
    """Expired records of rows (msg_from, msg_to or grp, sent_timestamp, sent_us, accepted_us, id,
    delivered), oldest first: a DELETE's RETURNING comes in no defined order (PostgreSQL's follows
    the table's pages, where a message marked `acked` has moved). `delivered` says whether every
    recipient had acknowledged it."""
    return [Expired(r[0], r[1], r[2], r[3], group, bool(r[6]))
            for r in sorted(rows, key=lambda r: (r[4], r[5]))]


# The columns of an Attachment record, in its fields' order.
ATTACHMENT_COLUMNS: Final = "id, owner, name, content_type, size, width, height, thumbnail_size"


def _attachment(r: Sequence[Any]) -> Attachment:
    return Attachment(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7])


def _room(r: Sequence[Any]) -> Room:
    return Room(r[0], r[1], bytes(r[2]) if r[2] is not None else None, r[3])


def like_pattern(text: str) -> str:
    """A LIKE pattern (escape character `\\`) for names containing `text`, ignoring ASCII case:
    `%`, `_` and `\\` in `text` match themselves."""
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class SqlStore(GroupCommitStore[DB]):
    """The methods both engines implement with the same SQL: reads on the engine's read
    connection(s) (`_fetch`), rare writes as one small coroutine in the next batch (`_write`)."""

    SQL: ClassVar[Queries]

    @abstractmethod
    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        """Rows of one read; the driver's errors come out as StoreError."""

    # `live_sessions`: its SQL ($1 the hashes as `_text_list` makes them, $2 the oldest
    # last_used_us kept; rows (sid_hash, last_used_us)), which binds a list of strings its
    # engine's way; and TOUCH_SESSIONS, the UPDATE that records a use of those of $1 ($2 now)
    # whose last use is older than $3 and newer than $4 (not expired meanwhile).
    LIVE_SESSIONS: ClassVar[str]
    TOUCH_SESSIONS: ClassVar[str]
    # SPEC 8, with a list parameter ($1, as `_text_list` makes it): the attachments that may go
    # with a new message ($2 the owner; rows as ATTACHMENT_COLUMNS), and those of the messages
    # whose ids are $1 in column {column} (rows: the message id, then ATTACHMENT_COLUMNS),
    # in their order.
    ATTACHMENTS_TO_SEND: ClassVar[str]
    ATTACHMENTS_OF: ClassVar[str]
    # SPEC 9 `push_targets`: $1 now_us (mutes in force end after it), $2 the oldest last_used_us
    # of a live session, then the (phone, conversation) pairs as `_pairs` binds them; rows
    # (sid_hash, phone, endpoint, p256dh, auth, conversation) in the pairs' order, then by device.
    PUSH_TARGETS: ClassVar[str]

    @staticmethod
    @abstractmethod
    def _text_list(texts: list[Any]) -> Any:
        """`texts` (strings or integers) as one query parameter (SQLite: a JSON array;
        PostgreSQL: an array)."""

    @staticmethod
    @abstractmethod
    def _pairs(pairs: list[tuple[str, str]]) -> list[Any]:
        """(phone, conversation) pairs as PUSH_TARGETS's parameters from $3 on (SQLite: one JSON
        array of pairs; PostgreSQL: an array of phones and one of conversations)."""

    @staticmethod
    @abstractmethod
    async def _execute(db: DB, sql: str, *args: Any) -> int:
        """Run one statement on the writer connection; the number of rows it changed."""

    @staticmethod
    @abstractmethod
    async def _execute_many(db: DB, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """Run one statement once per row of arguments, on the writer connection."""

    @staticmethod
    @abstractmethod
    async def _query(db: DB, sql: str, *args: Any) -> list[Any]:
        """The rows of one statement (a SELECT, or a write with RETURNING) on the writer connection."""

    async def _lock_accounts(self, db: DB) -> None:
        """Make the account checks of this transaction (is there any account yet, who else is an
        admin) hold until its commit against other processes' transactions. Nothing to do for one
        writer that holds the database's write lock (SQLite's BEGIN IMMEDIATE)."""

    @abstractmethod
    async def _database_bytes(self) -> int:
        """The size of the database in bytes."""

    # -- users and sessions -------------------------------------------------------------------

    async def add_user(self, phone: str, name: str, password_hash: bytes) -> bool:
        return (await self.register_user(phone, name, password_hash, mode="open")).outcome == "created"

    # -- registration, administration, self service (SPEC 10) --------------------------------

    async def has_users(self) -> bool:
        return bool(await self._fetch(self.SQL.has_users))

    async def register_user(self, phone: str, name: str, password_hash: bytes, *, mode: str,
                            invite: str | None = None, admin: bool = False) -> Registered:
        async def op(db: DB) -> Registered:
            now = now_micros()
            await self._lock_accounts(db)
            first = not await self._query(db, self.SQL.has_users)
            took = False
            if not first and mode == "closed":
                return Registered("closed", False)
            if not first and mode == "invite":
                if invite is None or await self._execute(db, self.SQL.take_invite, invite, now) != 1:
                    return Registered("invite", False)
                took = True
            made_admin = admin or first
            if await self._execute(db, self.SQL.add_user, phone, name, password_hash, now,
                                   made_admin) != 1:
                if took:  # the same transaction: the use was never taken for anyone to see
                    await self._execute(db, self.SQL.give_back_invite, invite)
                return Registered("taken", False)
            return Registered("created", made_admin)
        result: Registered = await self._write(op)
        return result

    def _account(self, r: Sequence[Any]) -> Account:
        return Account(r[0], r[1], bool(r[2]), bool(r[3]), bool(r[4]), r[5], r[6], r[7], r[8])

    async def account(self, phone: str, max_age_seconds: int) -> Account | None:
        rows = await self._fetch(self.SQL.account, now_micros() - max_age_seconds * 1_000_000, phone)
        return self._account(rows[0]) if rows else None

    async def accounts(self, max_age_seconds: int) -> list[Account]:
        return [self._account(r) for r in await self._fetch(
            self.SQL.accounts, now_micros() - max_age_seconds * 1_000_000)]

    async def _last_admin(self, db: DB, phone: str) -> bool:
        """True when `phone` is the only enabled admin and other accounts exist."""
        admins = [r[0] for r in await self._query(db, self.SQL.enabled_admins)]
        return admins == [phone] and bool(await self._query(db, self.SQL.other_user, phone))

    async def set_account_flags(self, phone: str, *, admin: bool | None = None,
                                disabled: bool | None = None) -> list[str] | None:
        async def op(db: DB) -> list[str] | None | LastAdmin:
            await self._lock_accounts(db)
            flags = await self._query(db, self.SQL.user_flags, phone)
            if not flags:
                return None
            losing = (admin is False and bool(flags[0][0])) or (disabled is True and not flags[0][1])
            if losing and await self._last_admin(db, phone):
                return LastAdmin(f"{phone} is the last enabled admin; make another account admin first")
            if admin is not None:
                await self._execute(db, self.SQL.set_admin, admin, phone)
            ended: list[str] = []
            if disabled is not None:
                await self._execute(db, self.SQL.set_disabled, disabled, phone)
                if disabled:  # SPEC 10: a disabled user's devices end
                    ended = [r[0] for r in await self._query(db, self.SQL.take_sessions, phone)]
            return ended
        # A device that ends may let go of messages no other device waits for (SPEC 7.1): they
        # are scrubbed as acknowledged ones are (SPEC 6).
        result = await self._write(op, deletes=disabled is True)
        if isinstance(result, LastAdmin):
            raise result
        return result

    async def update_profile(self, phone: str, *, name: str | None = None,
                             hide_presence: bool | None = None) -> bool:
        async def op(db: DB) -> bool:
            if not await self._query(db, self.SQL.user_flags, phone):
                return False
            if name is not None:
                await self._execute(db, self.SQL.set_name, name, phone)
            if hide_presence is not None:
                await self._execute(db, self.SQL.set_hide_presence, hide_presence, phone)
            return True
        return bool(await self._write(op))

    async def change_password(self, phone: str, password_hash: bytes,
                              keep_session: str | None) -> list[str] | None:
        async def op(db: DB) -> list[str] | None:
            if await self._execute(db, self.SQL.set_password, password_hash, phone) != 1:
                return None
            if keep_session is None:
                return [r[0] for r in await self._query(db, self.SQL.take_sessions, phone)]
            return [r[0] for r in await self._query(db, self.SQL.take_other_sessions, phone,
                                                    keep_session)]
        return await self._write(op, deletes=True)  # the devices' messages may go (SPEC 7.1, 6)

    async def delete_account(self, phone: str) -> list[str] | None:
        async def op(db: DB) -> list[str] | None | LastAdmin:
            await self._lock_accounts(db)
            if not await self._query(db, self.SQL.user_flags, phone):
                return None
            if await self._last_admin(db, phone):
                return LastAdmin(f"{phone} is the last enabled admin; make another account admin first")
            ended = [r[0] for r in await self._query(db, self.SQL.take_sessions, phone)]
            await self._execute(db, self.SQL.delete_user, phone)
            return ended
        result = await self._write(op, deletes=True)
        if isinstance(result, LastAdmin):
            raise result
        return result

    async def create_invite(self, code: str, created_by: str | None, uses: int,
                            expires_us: int) -> bool:
        async def op(db: DB) -> bool:
            now = now_micros()
            await self._execute(db, self.SQL.drop_old_invites, now - INVITE_KEEP_US)
            return await self._execute(db, self.SQL.create_invite, code, created_by, uses, now,
                                       expires_us) == 1
        return bool(await self._write(op))

    async def invite(self, code: str) -> Invite | None:
        rows = await self._fetch(self.SQL.invite, code)
        return Invite(*rows[0]) if rows else None

    async def invites(self, now_us: int) -> list[Invite]:
        return [Invite(*r) for r in await self._fetch(self.SQL.invites, now_us)]

    async def revoke_invite(self, code: str) -> bool:
        async def op(db: DB) -> bool:
            return await self._execute(db, self.SQL.revoke_invite, code) == 1
        return bool(await self._write(op))

    async def stats(self, max_age_seconds: int) -> Stats:
        rows = await self._fetch(self.SQL.stats, now_micros() - max_age_seconds * 1_000_000)
        users, devices, stored = rows[0]
        return Stats(users, devices, stored, await self._database_bytes())

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
        return await self._write(op, deletes=True)  # the devices' messages may go (SPEC 7.1, 6)

    async def upgrade_password_hash(self, phone: str, old_hash: bytes, new_hash: bytes) -> bool:
        async def op(db: DB) -> bool:
            return await self._execute(db, self.SQL.upgrade_password_hash, new_hash, phone,
                                       old_hash) == 1
        return await self._write(op)

    async def delete_user(self, phone: str) -> bool:
        async def op(db: DB) -> bool:
            return await self._execute(db, self.SQL.delete_user, phone) == 1
        return await self._write(op, deletes=True)

    async def add_session(self, sid_hash: str, phone: str, label: str = UNKNOWN_DEVICE, *,
                          token: bool = False) -> str:
        device_id = secrets.token_urlsafe(12)  # 96 random bits, not derived from the session

        async def op(db: DB) -> None:
            await self._lock_user(db, phone)
            await self._execute(db, self.SQL.add_session, sid_hash, phone, now_micros(), device_id,
                                label, _kind(token))
            await self._execute(db, self.SQL.deliver_stored_personal, sid_hash, phone)
            await self._execute(db, self.SQL.deliver_stored_group, sid_hash, phone)
        await self._write(op)
        return device_id

    async def _lock_user(self, db: DB, phone: str) -> None:
        """Make a new device of `phone` and the messages other processes commit for `phone` at
        the same moment take turns, so that each such message either is committed first (and
        seen by add_session's next statements) or sees the new session (PostgreSQL; one SQLite
        writer needs nothing)."""

    async def drop_expired_sessions(self, max_age_seconds: float) -> int:
        async def op(db: DB) -> int:
            return await self._execute(db, self.SQL.drop_expired_sessions,
                                       now_micros() - round(max_age_seconds * 1_000_000))
        return await self._write(op, deletes=True)

    async def delete_session(self, sid_hash: str) -> None:
        async def op(db: DB) -> None:
            await self._execute(db, self.SQL.delete_session, sid_hash)
        # What waited for the device goes with it, and may take the last hold on a message
        # (SPEC 7.1): scrubbed as an acknowledged one (SPEC 6).
        await self._write(op, deletes=True)

    async def session_user(self, sid_hash: str, max_age_seconds: int, *,
                           token: bool = False) -> str | None:
        now = now_micros()
        cutoff = now - max_age_seconds * 1_000_000
        rows = await self._fetch(self.SQL.session_user, sid_hash, cutoff, _kind(token))
        if not rows:
            return None
        phone, last_used_us = rows[0]
        stale = now - touch_after_us(max_age_seconds)
        if last_used_us < stale:  # SPEC 7: this request is a use; recorded once in a while
            async def op(db: DB) -> None:
                await self._execute(db, self.SQL.touch_session, sid_hash, now, stale, cutoff)
            await self._write(op)
        return str(phone)

    async def live_sessions(self, sid_hashes: Collection[str], max_age_seconds: float) -> set[str]:
        hashes = list(sid_hashes)
        if not hashes:
            return set()
        now = now_micros()
        cutoff = now - round(max_age_seconds * 1_000_000)
        stale_before = now - touch_after_us(max_age_seconds)
        live: set[str] = set()
        for i in range(0, len(hashes), LIVE_SESSIONS_BATCH):
            rows = await self._fetch(self.LIVE_SESSIONS,
                                     self._text_list(hashes[i:i + LIVE_SESSIONS_BATCH]), cutoff)
            live.update(r[0] for r in rows)
            stale = [r[0] for r in rows if r[1] < stale_before]
            if stale:  # SPEC 7: an open socket is a use of its session
                await self._touch(stale, now, stale_before, cutoff)
        return live

    async def _touch(self, sid_hashes: list[str], now: int, stale_before: int, cutoff: int) -> None:
        async def op(db: DB) -> None:
            await self._execute(db, self.TOUCH_SESSIONS, self._text_list(sid_hashes), now,
                                stale_before, cutoff)
        await self._write(op)

    async def devices(self, phone: str, current: str | None, max_age_seconds: int) -> list[Device]:
        rows = await self._fetch(self.SQL.devices, phone, current or "",
                                 now_micros() - max_age_seconds * 1_000_000)
        return [Device(r[0], r[1], r[2], r[3], bool(r[4])) for r in rows]

    async def delete_device(self, phone: str, device_id: str) -> str | None:
        async def op(db: DB) -> str | None:
            rows = await self._query(db, self.SQL.delete_device, phone, device_id)
            return str(rows[0][0]) if rows else None
        return await self._write(op, deletes=True)  # as delete_session

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
        return [StoredMessage(r[0], r[1], r[2], r[3], ref=r[4])
                for r in await self._fetch(self.SQL.pending_for, msg_to)]

    async def pending_page(self, device: str, after: int,
                           limit: int) -> list[tuple[int, StoredMessage]]:
        rows = await self._fetch(self.SQL.pending_page, device, after, limit)
        attached = await self._attachments_of("personal_id", [r[0] for r in rows])
        return [(r[0], StoredMessage(r[1], r[2], r[3], r[4], attached.get(r[0], []), r[5]))
                for r in rows]

    async def _attachments_of(self, column: str, ids: list[int]) -> dict[int, list[dict[str, Any]]]:
        """The attachments (as frames carry them, SPEC 8) of the messages whose ids are `ids`
        in `column` (personal_id, group_id, room_id), by message id, in their order; one query
        (none for no ids)."""
        found: dict[int, list[dict[str, Any]]] = {}
        if ids:
            for r in await self._fetch(self.ATTACHMENTS_OF.format(column=column), self._text_list(ids)):
                found.setdefault(r[0], []).append(_attachment(r[1:]).wire())
        return found

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

    async def create_room(self, name: str, created_by: str, password_hash: bytes | None,
                          category: str | None = None) -> bool:
        async def op(db: DB) -> bool:
            return await self._execute(db, self.SQL.create_room, name, created_by, password_hash,
                                       now_micros(), category) == 1
        return await self._write(op)

    async def search_rooms(self, q: str, category: str | None, limit: int) -> list[Room]:
        return [_room(r) for r in await self._fetch(self.SQL.search_rooms, like_pattern(q),
                                                     category, limit)]

    async def delete_room(self, name: str, created_by: str) -> bool:
        async def op(db: DB) -> bool:
            if await self._execute(db, self.SQL.delete_room, name, created_by) != 1:
                return False
            await self._execute(db, self.SQL.drop_room_mutes, f"room:{name}")
            return True
        return bool(await self._write(op, deletes=True))

    async def save_room(self, phone: str, room: str) -> bool:
        async def op(db: DB) -> bool | ValueError:
            await self._lock_owner(db, phone)  # two processes' saves of one user count in turn
            if not await self._query(db, self.SQL.room_exists, room):
                return False
            if await self._execute(db, self.SQL.save_room, phone, room, now_micros(),
                                   MAX_SAVED_ROOMS) != 1:
                # returned, not raised: a raise would fail (and rerun) the whole batch
                return ValueError(f"at most {MAX_SAVED_ROOMS} rooms can be saved")
            return True
        saved = await self._write(op)
        if isinstance(saved, ValueError):
            raise saved
        return bool(saved)

    async def unsave_room(self, phone: str, room: str) -> bool:
        async def op(db: DB) -> bool:
            return await self._execute(db, self.SQL.unsave_room, phone, room) == 1
        return bool(await self._write(op))

    async def saved_rooms(self, phone: str) -> list[str]:
        return [r[0] for r in await self._fetch(self.SQL.saved_rooms, phone)]

    async def room(self, name: str) -> Room | None:
        rows = await self._fetch(self.SQL.room, name)
        return _room(rows[0]) if rows else None

    async def rooms(self) -> list[Room]:
        return [_room(r) for r in await self._fetch(self.SQL.rooms)]

    async def rooms_for(self, phone: str, sid_hash: str, newest_public: int) -> list[Room]:
        return [_room(r) for r in await self._fetch(self.SQL.rooms_for, phone, sid_hash, newest_public)]

    async def room_history(self, room: str, limit: int) -> list[RoomMessage]:
        rows = await self._fetch(self.SQL.room_history, room, limit)
        attached = await self._attachments_of("room_id", [r[0] for r in rows])
        return [RoomMessage(r[0], r[1], r[2], r[3], attached.get(r[0], []), r[4]) for r in rows]

    # -- attachments (SPEC 8) -----------------------------------------------------------------

    async def reserve_attachment(self, attachment: Attachment, quota_bytes: int) -> None:
        a = attachment

        async def op(db: DB) -> int:
            await self._lock_owner(db, a.owner)
            return await self._execute(db, self.SQL.reserve_attachment, a.id, a.owner, a.name,
                                       a.content_type, a.size, a.width, a.height, a.thumbnail_size,
                                       now_micros(), quota_bytes)
        if await self._write(op) != 1:
            raise QuotaExceeded("your attachments would take more than your quota")

    async def _lock_owner(self, db: DB, phone: str) -> None:
        """Make two uploads of one owner check the quota one after the other, and two mutes of
        one user the MAX_MUTES limit (PostgreSQL: FOR NO KEY UPDATE of the owner's row, which
        new messages' foreign keys do not wait for; one SQLite writer needs nothing)."""

    async def put_attachment_chunk(self, attachment_id: str, part: int, n: int, data: bytes) -> None:
        async def op(db: DB) -> None:
            await self._execute(db, self.SQL.put_attachment_chunk, attachment_id, part, n, data)
        await self._write(op)

    async def complete_attachment(self, attachment_id: str) -> None:
        async def op(db: DB) -> None:
            await self._execute(db, self.SQL.complete_attachment, attachment_id)
        await self._write(op)

    async def delete_attachment(self, attachment_id: str) -> None:
        async def op(db: DB) -> None:
            await self._execute(db, self.SQL.delete_attachment, attachment_id)
        await self._write(op, deletes=True)

    async def attachments_to_send(self, ids: Sequence[str], owner: str) -> list[Attachment] | None:
        if not ids:
            return []
        found = {r[0]: _attachment(r) for r in await self._fetch(
            self.ATTACHMENTS_TO_SEND, self._text_list(list(ids)), owner)}
        if len(set(ids)) != len(ids) or set(found) != set(ids):
            return None
        return [found[i] for i in ids]

    async def attachment_for(self, attachment_id: str, phone: str, sid_hash: str) -> Attachment | None:
        rows = await self._fetch(self.SQL.attachment_for, attachment_id, phone, sid_hash)
        return _attachment(rows[0]) if rows else None

    async def attachment_chunk(self, attachment_id: str, part: int, n: int) -> bytes | None:
        rows = await self._fetch(self.SQL.attachment_chunk, attachment_id, part, n)
        return bytes(rows[0][0]) if rows else None

    async def drop_unclaimed_attachments(self, before_us: int) -> int:
        async def op(db: DB) -> int:
            return await self._execute(db, self.SQL.drop_unclaimed_attachments, before_us)
        return await self._write(op, deletes=True)

    async def attachment_bytes(self) -> int:
        return int((await self._fetch(self.SQL.attachment_bytes))[0][0])

    # -- Web Push (SPEC 9) --------------------------------------------------------------------

    async def set_push_subscription(self, sid_hash: str, endpoint: str, p256dh: str,
                                    auth: str) -> bool:
        async def op(db: DB) -> bool:
            await self._execute(db, self.SQL.drop_endpoint_elsewhere, sid_hash, endpoint)
            return await self._execute(db, self.SQL.set_push_subscription, sid_hash, endpoint,
                                       p256dh, auth, now_micros()) == 1
        return bool(await self._write(op))

    async def delete_push_subscription(self, sid_hash: str) -> bool:
        async def op(db: DB) -> bool:
            return await self._execute(db, self.SQL.delete_push_subscription, sid_hash) == 1
        return bool(await self._write(op))

    async def push_subscription(self, sid_hash: str) -> PushSubscription | None:
        rows = await self._fetch(self.SQL.push_subscription, sid_hash)
        return PushSubscription(*rows[0]) if rows else None

    async def drop_push_subscription(self, sid_hash: str, endpoint: str) -> bool:
        async def op(db: DB) -> bool:
            return await self._execute(db, self.SQL.drop_push_subscription, sid_hash, endpoint) == 1
        return bool(await self._write(op))

    async def push_targets(self, wanted: Sequence[tuple[str, str]],
                           now_us: int) -> list[PushSubscription]:
        pairs = list(dict.fromkeys((phone, conversation) for phone, conversation in wanted))
        if not pairs:
            return []
        rows = await self._fetch(self.PUSH_TARGETS, now_us, self._live_after_us(), *self._pairs(pairs))
        return [PushSubscription(*r) for r in rows]

    async def set_mute(self, phone: str, conversation: str, until_us: int | None) -> None:
        async def op(db: DB) -> ValueError | None:
            if until_us is None:
                await self._execute(db, self.SQL.unmute, phone, conversation)
                return None
            await self._lock_owner(db, phone)  # two processes' mutes of one user count in turn
            await self._execute(db, self.SQL.drop_past_mutes, phone, now_micros())
            if await self._execute(db, self.SQL.set_mute, phone, conversation, until_us,
                                   MAX_MUTES) != 1:
                # returned, not raised: a raise would fail (and rerun) the whole batch
                return ValueError(f"at most {MAX_MUTES} conversations can be muted at once")
            return None
        refused = await self._write(op)
        if refused is not None:
            raise refused

    async def mutes(self, phone: str, now_us: int) -> list[tuple[str, int]]:
        return [(r[0], r[1]) for r in await self._fetch(self.SQL.mutes, phone, now_us)]

    async def waiting_count(self, device: str, phone: str, conversation: str) -> int:
        kind, _, key = conversation.partition(":")
        if not key:
            return 0
        if kind == "personal":
            sql = self.SQL.waiting_personal
        elif kind == "group":
            sql = self.SQL.waiting_group
        else:
            return 0  # a room keeps no message for a device
        return int((await self._fetch(sql, device, phone, key))[0][0])

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
