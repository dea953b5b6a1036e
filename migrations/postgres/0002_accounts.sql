-- Version 2 (issue 12, SPEC 10): administrators, disabled accounts, hidden presence, invites, and
-- the time each stored message was accepted (for retention.undelivered_days).

-- SPEC 10: "the first account is an admin". A database made by version 1 had no admins: its
-- oldest account becomes one, so that the operator can reach the admin page after the upgrade.
ALTER TABLE users ADD COLUMN admin BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE users ADD COLUMN disabled BOOLEAN NOT NULL DEFAULT FALSE;      -- cannot log in (SPEC 10)
ALTER TABLE users ADD COLUMN hide_presence BOOLEAN NOT NULL DEFAULT FALSE; -- shows no presence to anyone
UPDATE users SET admin = TRUE
WHERE phone = (SELECT phone FROM users ORDER BY created_us, phone LIMIT 1);

-- Invites (SPEC 10): a code lets `uses_left` more registrations until `expires_us`. The code is
-- kept as it is, so that admins can list and share again the invites they made (README "Security").
CREATE TABLE IF NOT EXISTS invites (
    code       TEXT COLLATE "C" PRIMARY KEY,
    created_by TEXT COLLATE "C" REFERENCES users(phone) ON DELETE SET NULL,  -- NULL: `run.py invite`
    uses       INTEGER NOT NULL,                                           -- as made
    uses_left  INTEGER NOT NULL CHECK (uses_left >= 0),
    created_us BIGINT NOT NULL,
    expires_us BIGINT NOT NULL
);

-- When the server accepted each stored message (microseconds, UTC); rows stored before this
-- version count as accepted now (the upgrade), so that none expires at the first hourly check.
ALTER TABLE personal_messages ADD COLUMN accepted_us BIGINT NOT NULL
    DEFAULT (extract(epoch FROM clock_timestamp()) * 1000000)::BIGINT;
ALTER TABLE group_messages ADD COLUMN accepted_us BIGINT NOT NULL
    DEFAULT (extract(epoch FROM clock_timestamp()) * 1000000)::BIGINT;
CREATE INDEX IF NOT EXISTS personal_messages_accepted ON personal_messages(accepted_us);
CREATE INDEX IF NOT EXISTS group_messages_accepted ON group_messages(accepted_us);
