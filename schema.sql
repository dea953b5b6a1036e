-- Version 1 of the SQLite schema: applied to an empty database only. A change is a new migration
-- (chatserver/stores/migrations/sqlite/), never an edit of this file (docs/storage.md).
-- Timestamps ending in _us are microseconds since the Unix epoch, UTC; text timestamps are as the
-- protocol shows them (SPEC 5).

CREATE TABLE IF NOT EXISTS users (
    phone         TEXT PRIMARY KEY,          -- SPEC 1: ^[0-9]{10,15}$
    name          TEXT NOT NULL,             -- 1-64 characters
    password_hash BLOB NOT NULL,             -- bcrypt
    created_us    INTEGER NOT NULL,
    last_seen_us  INTEGER                    -- when the last receive socket closed (presence)
) WITHOUT ROWID;

-- Server-side session records (SPEC 4 /logout): the encrypted cookie carries a random id, this
-- table keeps only its SHA-256, so a copy of the database does not hold live sessions.
CREATE TABLE IF NOT EXISTS sessions (
    sid_hash   TEXT PRIMARY KEY,
    phone      TEXT NOT NULL REFERENCES users(phone) ON DELETE CASCADE,
    created_us INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sessions_phone ON sessions(phone);

-- One row per direction of a dialogue: what msg_to has received and seen of msg_from's messages.
CREATE TABLE IF NOT EXISTS dialogues (
    msg_from               TEXT NOT NULL REFERENCES users(phone) ON DELETE CASCADE,
    msg_to                 TEXT NOT NULL REFERENCES users(phone) ON DELETE CASCADE,
    last_received_receiver TEXT,             -- server format, or NULL
    last_seen_receiver     TEXT,
    PRIMARY KEY (msg_from, msg_to)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dialogues_msg_to ON dialogues(msg_to);

-- Store-and-forward: a personal message lives here only until its recipient acknowledges it.
-- id is the order of acceptance ("oldest first", SPEC 5.2); identity is (msg_from, msg_to, sent_us).
CREATE TABLE IF NOT EXISTS personal_messages (
    id             INTEGER PRIMARY KEY,
    msg_from       TEXT NOT NULL REFERENCES users(phone) ON DELETE CASCADE,
    msg_to         TEXT NOT NULL REFERENCES users(phone) ON DELETE CASCADE,
    sent_us        INTEGER NOT NULL,
    sent_timestamp TEXT NOT NULL,            -- as the sender wrote it; pushed unchanged
    message        TEXT NOT NULL,
    UNIQUE (msg_to, msg_from, sent_us)
);
CREATE INDEX IF NOT EXISTS personal_messages_from ON personal_messages(msg_from, msg_to);

-- A message opens its dialogue (both directions) in the same statement, with no extra round trip.
CREATE TRIGGER IF NOT EXISTS personal_messages_open_dialogue
AFTER INSERT ON personal_messages
BEGIN
    INSERT OR IGNORE INTO dialogues (msg_from, msg_to)
    VALUES (new.msg_from, new.msg_to), (new.msg_to, new.msg_from);
END;

-- Groups (SPEC 5.3). A member's read position lets a sender's client show "read by k of n".
CREATE TABLE IF NOT EXISTS groups (
    key        TEXT PRIMARY KEY,             -- [A-Za-z0-9]{10}
    name       TEXT NOT NULL,
    created_us INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS group_members (
    grp        TEXT NOT NULL REFERENCES groups(key) ON DELETE CASCADE,
    phone      TEXT NOT NULL REFERENCES users(phone) ON DELETE CASCADE,
    is_admin   INTEGER NOT NULL DEFAULT 0,
    joined_us  INTEGER NOT NULL,
    last_read  TEXT,                         -- sent_timestamp (server format) of the last message read
    PRIMARY KEY (grp, phone)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS group_members_phone ON group_members(phone);

-- Store-and-forward for groups: one row per message plus one row per recipient still pending.
CREATE TABLE IF NOT EXISTS group_messages (
    id             INTEGER PRIMARY KEY,      -- acceptance order
    grp            TEXT NOT NULL REFERENCES groups(key) ON DELETE CASCADE,
    msg_from       TEXT NOT NULL REFERENCES users(phone) ON DELETE CASCADE,
    sent_us        INTEGER NOT NULL,
    sent_timestamp TEXT NOT NULL,
    message        TEXT NOT NULL,
    UNIQUE (grp, msg_from, sent_us)
);

CREATE TABLE IF NOT EXISTS group_pending (
    phone      TEXT NOT NULL,
    message_id INTEGER NOT NULL REFERENCES group_messages(id) ON DELETE CASCADE,
    PRIMARY KEY (phone, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS group_pending_message ON group_pending(message_id);

-- A new group message is pending for every member but its sender, as membership is at that
-- commit: chatserver/stores/sqlite.py inserts those rows in the message's own batch (RETURNING gives them back).
DROP TRIGGER IF EXISTS group_messages_pending;

-- The last acknowledgement (or the removal of the last pending member) deletes the message.
CREATE TRIGGER IF NOT EXISTS group_pending_last
AFTER DELETE ON group_pending
WHEN NOT EXISTS (SELECT 1 FROM group_pending WHERE message_id = old.message_id)
BEGIN
    DELETE FROM group_messages WHERE id = old.message_id;
END;

-- A member who leaves (or whose account is deleted) is dropped from every pending list (SPEC 5.3).
CREATE TRIGGER IF NOT EXISTS group_members_left
AFTER DELETE ON group_members
BEGIN
    DELETE FROM group_pending WHERE phone = old.phone AND message_id IN
        (SELECT id FROM group_messages WHERE grp = old.grp);
END;

-- Public rooms (SPEC 5.4): a bounded history, not store-and-forward. A private room has a password.
CREATE TABLE IF NOT EXISTS rooms (
    name          TEXT PRIMARY KEY,          -- [A-Za-z0-9_-]{1,64}
    created_by    TEXT REFERENCES users(phone) ON DELETE SET NULL,
    password_hash BLOB,                      -- bcrypt, or NULL for an open room
    created_us    INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS room_messages (
    id             INTEGER PRIMARY KEY,
    room           TEXT NOT NULL REFERENCES rooms(name) ON DELETE CASCADE,
    msg_from       TEXT NOT NULL REFERENCES users(phone) ON DELETE CASCADE,
    sent_us        INTEGER NOT NULL,
    sent_timestamp TEXT NOT NULL,
    message        TEXT NOT NULL,
    UNIQUE (room, msg_from, sent_us)
);
CREATE INDEX IF NOT EXISTS room_messages_room ON room_messages(room, id);

-- Private rooms a login session has given the password for (once per session).
CREATE TABLE IF NOT EXISTS session_rooms (
    sid_hash TEXT NOT NULL REFERENCES sessions(sid_hash) ON DELETE CASCADE,
    room     TEXT NOT NULL REFERENCES rooms(name) ON DELETE CASCADE,
    PRIMARY KEY (sid_hash, room)
) WITHOUT ROWID;

-- Contacts (with the name the owner gave them) and blocks.
CREATE TABLE IF NOT EXISTS contacts (
    owner TEXT NOT NULL REFERENCES users(phone) ON DELETE CASCADE,
    phone TEXT NOT NULL REFERENCES users(phone) ON DELETE CASCADE,
    name  TEXT NOT NULL,
    PRIMARY KEY (owner, phone)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS contacts_phone ON contacts(phone);

CREATE TABLE IF NOT EXISTS blocks (
    blocker TEXT NOT NULL REFERENCES users(phone) ON DELETE CASCADE,
    blocked TEXT NOT NULL REFERENCES users(phone) ON DELETE CASCADE,
    PRIMARY KEY (blocker, blocked)
) WITHOUT ROWID;
