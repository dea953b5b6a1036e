-- Version 7 (issue 15, SPEC 9): Web Push subscriptions and muted conversations.
--
-- A device (a login session, SPEC 7) has at most one push subscription, the browser's
-- PushSubscription as it gave it; it goes with its session (logout, a device ended, expiry, a
-- password change, the account deleted: ON DELETE CASCADE). `phone` is the session's, copied so
-- that the sender finds a user's subscribed devices on an index. An endpoint belongs to one
-- device: a new subscription with it replaces any other (Store.set_push_subscription), so that a
-- browser where another account logged in since gets no push of the first one.
CREATE TABLE IF NOT EXISTS push_subscriptions (
    sid_hash   TEXT PRIMARY KEY REFERENCES sessions(sid_hash) ON DELETE CASCADE,
    phone      TEXT NOT NULL,
    endpoint   TEXT NOT NULL,                -- the push service's URL: a capability, never logged
    p256dh     TEXT NOT NULL,                -- base64url, as the browser gave it
    auth       TEXT NOT NULL,                -- base64url
    created_us INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS push_subscriptions_phone ON push_subscriptions(phone);
CREATE UNIQUE INDEX IF NOT EXISTS push_subscriptions_endpoint ON push_subscriptions(endpoint);

-- No push for `conversation` ("personal:PHONE", "group:KEY", "room:NAME") to any device of
-- `phone` while until_us is in the future; a row whose time has passed is ignored, and dropped
-- when its user next sets a mute (at most chatserver.stores.base.MAX_MUTES rows a user).
CREATE TABLE IF NOT EXISTS mutes (
    phone        TEXT NOT NULL REFERENCES users(phone) ON DELETE CASCADE,
    conversation TEXT NOT NULL,
    until_us     INTEGER NOT NULL,
    PRIMARY KEY (phone, conversation)
) WITHOUT ROWID;
