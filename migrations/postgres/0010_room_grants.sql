-- Version 10 (issue 18, defect 7): a private room's password is given once per user, no longer
-- once per login session. A grant per session made people type it again after every login on
-- the same device (and the room's creator too); the client must not keep the password to send
-- it again. The grants of the sessions still alive become their users' grants. `session_rooms`
-- stays (unused from this version) so that a release before this one can still read the file.
CREATE TABLE IF NOT EXISTS room_grants (
    phone      TEXT COLLATE "C" NOT NULL REFERENCES users(phone) ON DELETE CASCADE,
    room       TEXT COLLATE "C" NOT NULL REFERENCES rooms(name) ON DELETE CASCADE,
    PRIMARY KEY (phone, room)
);
CREATE INDEX IF NOT EXISTS room_grants_room ON room_grants(room);
INSERT INTO room_grants (phone, room)
    SELECT s.phone, r.room FROM session_rooms AS r JOIN sessions AS s ON s.sid_hash = r.sid_hash
    ON CONFLICT DO NOTHING;
