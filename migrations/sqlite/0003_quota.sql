-- Version 3 (issue 12, SPEC 10): stored messages cannot fill the disk.

-- A recipient's personal messages in acceptance order: fetch_msgs reads them a page at a time
-- (keyset pagination, `id > last ORDER BY id LIMIT chunk`), and the per-recipient limit
-- (limits.max_waiting_per_recipient) counts them, each an index range instead of a sort of the
-- whole backlog. (In SQLite an index ends with the rowid, id, anyway; it is written for clarity.)
CREATE INDEX IF NOT EXISTS personal_messages_to ON personal_messages(msg_to, id);
