-- The whole schema, applied on every start (every statement is idempotent).
-- Timestamps ending in _us are microseconds since the Unix epoch, UTC; text timestamps are as the
-- protocol shows them (SPEC 5).

CREATE TABLE IF NOT EXISTS users (
    phone         TEXT PRIMARY KEY,          -- SPEC 1: ^[0-9]{10,15}$
    name          TEXT NOT NULL,             -- 1-64 characters
    password_hash BLOB NOT NULL,             -- bcrypt
    created_us    INTEGER NOT NULL
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
