-- Version 9 (issue 18, SPEC 13): replies, edits, unsending and reactions; the room catalogue.
--
-- `ref` is the one SPEC 13 field a message carries, as the JSON object the frames carry it in:
-- '{"reply_to": {"msg_from": PHONE, "sent_timestamp": TS}}' (or edit_of, delete_of, react_to);
-- NULL for an ordinary message (every message stored before this version). Pushes, fetches and
-- room history give it back unchanged. A `delete_of` deletes its original in the same commit.
ALTER TABLE personal_messages ADD COLUMN IF NOT EXISTS ref TEXT COLLATE "C";
ALTER TABLE group_messages ADD COLUMN IF NOT EXISTS ref TEXT COLLATE "C";
ALTER TABLE room_messages ADD COLUMN IF NOT EXISTS ref TEXT COLLATE "C";

-- A room's category (SPEC 13, 1-32 characters), NULL: none (every room made before this version).
ALTER TABLE rooms ADD COLUMN IF NOT EXISTS category TEXT;
CREATE INDEX IF NOT EXISTS rooms_created ON rooms(created_us);

-- The rooms a user saved (PUT /chat/rooms/saved); they go with the user or the room.
CREATE TABLE IF NOT EXISTS saved_rooms (
    phone    TEXT COLLATE "C" NOT NULL REFERENCES users(phone) ON DELETE CASCADE,
    room     TEXT COLLATE "C" NOT NULL REFERENCES rooms(name) ON DELETE CASCADE,
    saved_us BIGINT NOT NULL,
    PRIMARY KEY (phone, room)
);
CREATE INDEX IF NOT EXISTS saved_rooms_room ON saved_rooms(room);
