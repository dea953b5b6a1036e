-- Version 8 (issue 17, SPEC 12): client tokens for bots and scripts are devices.
--
-- A token is a row of `sessions` like a browser login (SPEC 7: listed, revoked, messages wait for
-- it), whose sid_hash is the SHA-256 of the token (the server never keeps the token itself).
-- `kind`: 'cookie' for a browser login (every session of before this version), 'token' for a
-- client token. A cookie session expires security.session_seconds after its last use; a token
-- does not expire by inactivity: it ends when revoked (DELETE /chat/devices), when its user's
-- password changes, or with its user.
ALTER TABLE sessions ADD COLUMN kind TEXT NOT NULL DEFAULT 'cookie' CHECK (kind IN ('cookie', 'token'));

-- The index the deliveries of a new message look up a recipient's live devices on (0005), with
-- `kind`, so that "used since the cutoff, or a token" is still answered from the index alone.
DROP INDEX IF EXISTS sessions_live;
CREATE INDEX IF NOT EXISTS sessions_live ON sessions(phone, last_used_us, kind);
