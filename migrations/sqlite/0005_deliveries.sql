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

-- One B-tree, keyed by message first: every personal message writes and deletes its rows here,
-- and a second index would cost each message as much again (bench/bench.py). A device's
-- fetch_msgs finds its rows through its user's messages instead, and a session that ends finds
-- its rows by a scan (rare; the table holds only what waits).
CREATE TABLE IF NOT EXISTS personal_deliveries (
    message_id INTEGER NOT NULL REFERENCES personal_messages(id) ON DELETE CASCADE,
    sid_hash   TEXT NOT NULL REFERENCES sessions(sid_hash) ON DELETE CASCADE,
    PRIMARY KEY (message_id, sid_hash)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS group_deliveries (
    sid_hash   TEXT NOT NULL REFERENCES sessions(sid_hash) ON DELETE CASCADE,
    message_id INTEGER NOT NULL REFERENCES group_messages(id) ON DELETE CASCADE,
    PRIMARY KEY (sid_hash, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS group_deliveries_message ON group_deliveries(message_id);

-- What waits for a recipient (the mailbox limit of SPEC 10, `waiting`): only what no device of
-- theirs acknowledged, counted on this index alone. It replaces 0003's index on (msg_to, id),
-- whose other use (fetch_msgs by recipient) is now by device (personal_deliveries): one index
-- to keep up per message, as before.
CREATE INDEX IF NOT EXISTS personal_messages_waiting ON personal_messages(msg_to, id) WHERE NOT acked;
DROP INDEX IF EXISTS personal_messages_to;
-- A new message finds its recipient's and sender's live devices on this index alone.
CREATE INDEX IF NOT EXISTS sessions_live ON sessions(phone, last_used_us);

-- What was stored before this version waits for every device its recipient has now.
INSERT INTO personal_deliveries (message_id, sid_hash)
SELECT p.id, s.sid_hash FROM personal_messages AS p JOIN sessions AS s ON s.phone = p.msg_to;
INSERT INTO group_deliveries (sid_hash, message_id)
SELECT s.sid_hash, g.message_id FROM group_pending AS g JOIN sessions AS s ON s.phone = g.phone;

-- A personal message goes once its recipient acknowledged it and no device waits for it. `acked`
-- is asked first: a row deleted with its message (the usual acknowledgement) then costs one probe.
CREATE TRIGGER IF NOT EXISTS personal_deliveries_last
AFTER DELETE ON personal_deliveries
WHEN (SELECT acked FROM personal_messages WHERE id = old.message_id)
 AND NOT EXISTS (SELECT 1 FROM personal_deliveries WHERE message_id = old.message_id)
BEGIN
    DELETE FROM personal_messages WHERE id = old.message_id;
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
