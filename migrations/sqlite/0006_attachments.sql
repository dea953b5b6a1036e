-- Version 6 (issue 14, SPEC 8): photos and files, store-and-forward like their message.
--
-- An attachment is uploaded first (owner, no message: "unclaimed"; `complete` once every chunk
-- is written), then named by one message, which claims it (exactly one of personal_id, group_id,
-- room_id set). It goes with that message (ON DELETE CASCADE: the last acknowledgement, a room's
-- trim, expiry), its chunks with it; an upload never claimed goes after
-- attachments.unclaimed_seconds. `position` keeps the order the message named them in.
CREATE TABLE IF NOT EXISTS attachments (
    id             TEXT PRIMARY KEY,          -- 128 random bits, url-safe (SPEC 8)
    owner          TEXT NOT NULL REFERENCES users(phone) ON DELETE CASCADE,
    name           TEXT NOT NULL,             -- as uploaded, cleaned (no path, no control characters)
    content_type   TEXT NOT NULL,             -- read from the bytes, never from the sender
    size           INTEGER NOT NULL,          -- bytes of the stored file
    width          INTEGER,                   -- pixels, images only
    height         INTEGER,
    thumbnail_size INTEGER,                   -- bytes of the stored thumbnail, NULL: none
    created_us     INTEGER NOT NULL,
    complete       INTEGER NOT NULL DEFAULT 0,
    personal_id    INTEGER REFERENCES personal_messages(id) ON DELETE CASCADE,
    group_id       INTEGER REFERENCES group_messages(id) ON DELETE CASCADE,
    room_id        INTEGER REFERENCES room_messages(id) ON DELETE CASCADE,
    position       INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS attachments_owner ON attachments(owner);
-- A message's delete finds its attachments (the cascade) and a fetch lists them, by index.
CREATE INDEX IF NOT EXISTS attachments_personal ON attachments(personal_id);
CREATE INDEX IF NOT EXISTS attachments_group ON attachments(group_id);
CREATE INDEX IF NOT EXISTS attachments_room ON attachments(room_id);
CREATE INDEX IF NOT EXISTS attachments_created ON attachments(created_us);

-- The bytes, in chunks of chatserver.stores.base.ATTACHMENT_CHUNK bytes: uploads and downloads
-- hold one chunk in memory, and a Range request reads only the chunks it needs. A rowid table:
-- SQLite keeps large rows of a WITHOUT ROWID table badly.
CREATE TABLE IF NOT EXISTS attachment_chunks (
    attachment_id TEXT NOT NULL REFERENCES attachments(id) ON DELETE CASCADE,
    part          INTEGER NOT NULL,           -- 0: the file, 1: its thumbnail
    n             INTEGER NOT NULL,           -- the chunk's number, from 0
    data          BLOB NOT NULL,
    UNIQUE (attachment_id, part, n)
);
