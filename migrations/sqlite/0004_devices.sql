-- Version 4 (issue 13, SPEC 7): a login session is a device the user can list and end.

-- `id`: the device's opaque name in GET/DELETE /chat/devices, neither the cookie's secret nor
-- its stored hash (the server makes it: 16 url-safe characters of 96 random bits; sessions of
-- before this version get 24 hex characters of randomblob). `label`: what the User-Agent of the
-- login said (auth.device_label), for display only. `last_used_us`: the last recorded use (a
-- request, or a socket open at a session check); a session expires security.session_seconds
-- after it (SPEC 7), and sessions of before this version count as last used when created.
ALTER TABLE sessions ADD COLUMN id TEXT NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN label TEXT NOT NULL DEFAULT 'Unknown device';
ALTER TABLE sessions ADD COLUMN last_used_us INTEGER NOT NULL DEFAULT 0;
UPDATE sessions SET id = lower(hex(randomblob(12))), last_used_us = created_us;
CREATE UNIQUE INDEX IF NOT EXISTS sessions_id ON sessions(id);
