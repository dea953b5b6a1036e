-- Version 6 (issue 14, SPEC 8): photos and files, store-and-forward like their message.
--
-- An attachment is uploaded first (owner, no message: "unclaimed"; `complete` once every chunk
-- is written), then named by one message, which claims it (exactly one of personal_id, group_id,
-- room_id set). It goes with that message (ON DELETE CASCADE: the last acknowledgement, a room's
-- trim, expiry), its chunks with it; an upload never claimed goes after
-- attachments.unclaimed_seconds. `position` keeps the order the message named them in.
CREATE TABLE IF NOT EXISTS attachments (
    id             TEXT COLLATE "C" PRIMARY KEY,  -- 128 random bits, url-safe (SPEC 8)
    owner          TEXT COLLATE "C" NOT NULL REFERENCES users(phone) ON DELETE CASCADE,
    name           TEXT NOT NULL,                 -- as uploaded, cleaned
    content_type   TEXT COLLATE "C" NOT NULL,     -- read from the bytes, never from the sender
    size           BIGINT NOT NULL,               -- bytes of the stored file
    width          INTEGER,                       -- pixels, images only
    height         INTEGER,
    thumbnail_size INTEGER,                       -- bytes of the stored thumbnail, NULL: none
    created_us     BIGINT NOT NULL,
    complete       BOOLEAN NOT NULL DEFAULT false,
    personal_id    BIGINT REFERENCES personal_messages(id) ON DELETE CASCADE,
    group_id       BIGINT REFERENCES group_messages(id) ON DELETE CASCADE,
    room_id        BIGINT REFERENCES room_messages(id) ON DELETE CASCADE,
    position       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS attachments_owner ON attachments(owner);
-- A message's delete finds its attachments (the cascade) and a fetch lists them, by index.
CREATE INDEX IF NOT EXISTS attachments_personal ON attachments(personal_id);
CREATE INDEX IF NOT EXISTS attachments_group ON attachments(group_id);
CREATE INDEX IF NOT EXISTS attachments_room ON attachments(room_id);
CREATE INDEX IF NOT EXISTS attachments_created ON attachments(created_us);

-- The bytes, in chunks of chatserver.stores.base.ATTACHMENT_CHUNK bytes (bytea, TOASTed): uploads
-- and downloads hold one chunk in memory, and a Range request reads only the chunks it needs.
CREATE TABLE IF NOT EXISTS attachment_chunks (
    attachment_id TEXT COLLATE "C" NOT NULL REFERENCES attachments(id) ON DELETE CASCADE,
    part          SMALLINT NOT NULL,              -- 0: the file, 1: its thumbnail
    n             INTEGER NOT NULL,               -- the chunk's number, from 0
    data          BYTEA NOT NULL,
    PRIMARY KEY (attachment_id, part, n)
);
