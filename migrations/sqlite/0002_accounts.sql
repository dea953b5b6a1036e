-- Version 2 (issue 12, SPEC 10): administrators, disabled accounts, hidden presence, invites, and
-- the time each stored message was accepted (for retention.undelivered_days).

-- SPEC 10: "the first account is an admin". A database made by version 1 had no admins: its
-- oldest account becomes one, so that the operator can reach the admin page after the upgrade.
ALTER TABLE users ADD COLUMN admin INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0;   -- cannot log in (SPEC 10)
ALTER TABLE users ADD COLUMN hide_presence INTEGER NOT NULL DEFAULT 0;  -- shows no presence to anyone
UPDATE users SET admin = 1
WHERE phone = (SELECT phone FROM users ORDER BY created_us, phone LIMIT 1);

-- Invites (SPEC 10): a code lets `uses_left` more registrations until `expires_us`. The code is
-- kept as it is, so that admins can list and share again the invites they made (README "Security").
CREATE TABLE IF NOT EXISTS invites (
    code       TEXT PRIMARY KEY,
    created_by TEXT REFERENCES users(phone) ON DELETE SET NULL,  -- NULL: made by `run.py invite`
    uses       INTEGER NOT NULL,                                 -- as made
    uses_left  INTEGER NOT NULL CHECK (uses_left >= 0),
    created_us INTEGER NOT NULL,
    expires_us INTEGER NOT NULL
) WITHOUT ROWID;

-- When the server accepted each stored message (microseconds, UTC). ALTER TABLE cannot give SQLite
-- a column a non-constant default: inserts set it, and rows stored before this version count as
-- accepted now (the upgrade), so that none expires at the first hourly check after it.
ALTER TABLE personal_messages ADD COLUMN accepted_us INTEGER NOT NULL DEFAULT 0;
ALTER TABLE group_messages ADD COLUMN accepted_us INTEGER NOT NULL DEFAULT 0;
UPDATE personal_messages SET accepted_us = CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER);
UPDATE group_messages SET accepted_us = CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER);
CREATE INDEX IF NOT EXISTS personal_messages_accepted ON personal_messages(accepted_us);
CREATE INDEX IF NOT EXISTS group_messages_accepted ON group_messages(accepted_us);
