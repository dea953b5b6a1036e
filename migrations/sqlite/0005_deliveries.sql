-- Version 5 (issue 13, SPEC 7.1 and 7.2): every device gets every message.
--
-- A stored message waits for each device of its recipient (and, for a copy of one's own message,
-- for each other device of its sender): one row per (device, message). A device acknowledges by
-- deleting its row. `acked` records that the recipient acknowledged on at least one device (the
-- receipt of SPEC 5.1 went out; `waiting` no longer counts it); a group message's recipients keep
-- their group_pending rows until their first device acknowledges. A message goes when nothing
-- waits for it any more (the triggers below), so a device that ends (its session row deleted)
-- takes its rows with it (ON DELETE CASCADE) and may so let its messages go.

ALTER TABLE personal_messages ADD COLUMN acked INTEGER NOT NULL DEFAULT 0;

CREATE TABLE IF NOT EXISTS personal_deliveries (
    sid_hash   TEXT NOT NULL REFERENCES sessions(sid_hash) ON DELETE CASCADE,
    message_id INTEGER NOT NULL REFERENCES personal_messages(id) ON DELETE CASCADE,
    PRIMARY KEY (sid_hash, message_id)   -- a device's fetch_msgs, a page at a time
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS personal_deliveries_message ON personal_deliveries(message_id);

CREATE TABLE IF NOT EXISTS group_deliveries (
    sid_hash   TEXT NOT NULL REFERENCES sessions(sid_hash) ON DELETE CASCADE,
    message_id INTEGER NOT NULL REFERENCES group_messages(id) ON DELETE CASCADE,
    PRIMARY KEY (sid_hash, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS group_deliveries_message ON group_deliveries(message_id);

-- What was stored before this version waits for every device its recipient has now.
INSERT INTO personal_deliveries (sid_hash, message_id)
SELECT s.sid_hash, p.id FROM personal_messages AS p JOIN sessions AS s ON s.phone = p.msg_to;
INSERT INTO group_deliveries (sid_hash, message_id)
SELECT s.sid_hash, g.message_id FROM group_pending AS g JOIN sessions AS s ON s.phone = g.phone;

-- A personal message goes once its recipient acknowledged it and no device waits for it.
CREATE TRIGGER IF NOT EXISTS personal_deliveries_last
AFTER DELETE ON personal_deliveries
WHEN NOT EXISTS (SELECT 1 FROM personal_deliveries WHERE message_id = old.message_id)
BEGIN
    DELETE FROM personal_messages WHERE id = old.message_id AND acked;
END;

-- A group message goes once no participant is pending and no device waits for it.
DROP TRIGGER IF EXISTS group_pending_last;
CREATE TRIGGER group_pending_last
AFTER DELETE ON group_pending
WHEN NOT EXISTS (SELECT 1 FROM group_pending WHERE message_id = old.message_id)
 AND NOT EXISTS (SELECT 1 FROM group_deliveries WHERE message_id = old.message_id)
BEGIN
    DELETE FROM group_messages WHERE id = old.message_id;
END;

CREATE TRIGGER IF NOT EXISTS group_deliveries_last
AFTER DELETE ON group_deliveries
WHEN NOT EXISTS (SELECT 1 FROM group_deliveries WHERE message_id = old.message_id)
 AND NOT EXISTS (SELECT 1 FROM group_pending WHERE message_id = old.message_id)
BEGIN
    DELETE FROM group_messages WHERE id = old.message_id;
END;

-- A member who leaves (or whose account is deleted) is dropped from every pending list of the
-- group (SPEC 5.3), and their devices stop waiting for its messages (SPEC 7.1: who left is done).
DROP TRIGGER IF EXISTS group_members_left;
CREATE TRIGGER group_members_left
AFTER DELETE ON group_members
BEGIN
    DELETE FROM group_pending WHERE phone = old.phone AND message_id IN
        (SELECT id FROM group_messages WHERE grp = old.grp);
    DELETE FROM group_deliveries
    WHERE sid_hash IN (SELECT sid_hash FROM sessions WHERE phone = old.phone)
      AND message_id IN (SELECT id FROM group_messages WHERE grp = old.grp);
END;
