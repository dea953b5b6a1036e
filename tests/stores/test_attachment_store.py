"""The attachment store (SPEC 8, issue 14) on both engines, with the fixtures and helpers of
test_store_contract.py: an upload reserved, written in chunks and completed; the owner's quota
(also uploads at once, and on PostgreSQL two stores on one schema as two processes); messages
claiming their attachments (in order, refused alone in their batch, once, and a retry claims
nothing); who may download (`attachment_for`); an attachment's lifetime, which is its message's
(last acknowledgement, a room's trim, expiry), unclaimed uploads dropped after a cutoff, and on
SQLite its bytes gone from the database file and the WAL after the scrub."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, Literal

import asyncpg
import pytest

# The contract module's helpers; its fixtures (db_path, place, store, pg_store) come through
# tests/stores/conftest.py.
from test_store_contract import (
    R1,
    R2,
    T1,
    T2,
    T3,
    TIMEOUT,
    A,
    AnyStore,
    B,
    C,
    G,
    Place,
    add_sessions,
    connected,
    files_holding,
    opened,
    place_rows,
    trace_writer,
)

from chatserver.protocol import now_micros
from chatserver.stores.base import (
    ATTACHMENT_CHUNK,
    FILE_PART,
    THUMBNAIL_PART,
    Ack,
    Attachment,
    AttachmentRefused,
    MailboxFull,
    QuotaExceeded,
    Stored,
)
from chatserver.stores.postgres import PgStore
from helpers import backends

pytestmark = pytest.mark.backends(backends.LOCAL, backends.POSTGRES)

D: Final = "1000000004"  # a user who is in no group and got no message
ROOM: Final = "lobby"  # public, created by A
QUOTA: Final = 1 << 30  # limits.attachment_quota_bytes' default: out of the way unless tested
Kind = Literal["personal", "group", "room"]
KINDS: Final[tuple[Kind, ...]] = ("personal", "group", "room")


def new_id(prefix: str = "") -> str:
    """An attachment id as the server makes them (128 random bits, url-safe), after `prefix`."""
    return prefix + secrets.token_urlsafe(16)


def pattern(marker: bytes, size: int) -> bytes:
    """`size` bytes of `marker` over and over: found in a database file's bytes only if stored."""
    return (marker * (size // len(marker) + 1))[:size]


def marker() -> bytes:
    """A byte string that cannot occur by chance in a database file."""
    return f"attachment-secret-{uuid.uuid4().hex}".encode()


async def upload(store: AnyStore, owner: str, file: bytes, *, thumbnail: bytes | None = None,
                 image: bool = False, attachment_id: str | None = None, complete: bool = True,
                 quota: int = QUOTA) -> Attachment:
    """Reserve an attachment of `owner`, write `file` (and `thumbnail`) in ATTACHMENT_CHUNK
    chunks and, when `complete`, complete it, as the upload handler does; the record."""
    record = Attachment(attachment_id or new_id(), owner, f"name {len(file)}.bin",
                        "image/png" if image else "application/pdf", len(file),
                        640 if image else None, 480 if image else None,
                        None if thumbnail is None else len(thumbnail))
    await store.reserve_attachment(record, quota)
    for part, data in ((FILE_PART, file), (THUMBNAIL_PART, thumbnail or b"")):
        for n, start in enumerate(range(0, len(data), ATTACHMENT_CHUNK)):
            await store.put_attachment_chunk(record.id, part, n, data[start:start + ATTACHMENT_CHUNK])
    if complete:
        await store.complete_attachment(record.id)
    return record


async def small(store: AnyStore, owner: str, **kwargs: Any) -> Attachment:
    """A small complete upload of `owner` (a few bytes of its own)."""
    return await upload(store, owner, secrets.token_bytes(100), **kwargs)


async def read_part(store: AnyStore, attachment_id: str, part: int) -> bytes:
    """Every chunk of one part, read in order until attachment_chunk says None."""
    chunks: list[bytes] = []
    while (chunk := await store.attachment_chunk(attachment_id, part, len(chunks))) is not None:
        chunks.append(chunk)
    return b"".join(chunks)


async def left(place: Place, attachment_id: str) -> tuple[int, int]:
    """The rows the database holds for one attachment: (attachments, attachment_chunks)."""
    rows = await place_rows(
        place, f"SELECT (SELECT count(*) FROM attachments WHERE id = '{attachment_id}'),"
               f" (SELECT count(*) FROM attachment_chunks WHERE attachment_id = '{attachment_id}')")
    return int(rows[0][0]), int(rows[0][1])


def wires(*records: Attachment) -> list[dict[str, Any]]:
    """The records as a message's `attachments` carries them (SPEC 8), in this order."""
    return [r.wire() for r in records]


async def prepare(store: AnyStore) -> None:
    """D, a device each for A (a-1 sends, a-2 gets copies), B (b-1) and C (c-1), group G of A,
    B and C, and the public room ROOM of A."""
    assert await store.add_user(D, f"user {D}", b"hash")
    await add_sessions(store, ("a-1", A), ("a-2", A), ("b-1", B), ("c-1", C), ("d-1", D))
    assert await store.create_group(G, "g", A, [B, C])
    assert await store.create_room(ROOM, A, None)


def send(store: AnyStore, kind: Kind, sent_us: int, body: str,
         attachments: Sequence[str]) -> asyncio.Future[Any]:
    """A's message of `kind` (to B; to G; in ROOM) from device a-1, submitted now (not awaited:
    several calls in a row share a batch)."""
    if kind == "personal":
        return store.add_personal(A, B, sent_us, f"t{sent_us}", body, "a-1", attachments)
    if kind == "group":
        return store.add_group_message(G, A, sent_us, f"t{sent_us}", body, "a-1", attachments)
    return store.add_room_message(ROOM, A, sent_us, f"t{sent_us}", body, attachments)


async def carried(store: AnyStore, kind: Kind) -> list[tuple[str, list[dict[str, Any]]]]:
    """(body, attachments) of A's messages of `kind` as B fetches them (B's device b-1 pages,
    the room's history), in order."""
    if kind == "personal":
        return [(m.message, m.attachments) for _, m in await store.pending_page("b-1", 0, 1000)]
    if kind == "group":
        return [(m.message, m.attachments) for _, m in await store.pending_group_page("b-1", 0, 1000)]
    return [(m.message, m.attachments) for m in await store.room_history(ROOM, 1000)]


# -- an upload ----------------------------------------------------------------------------------


async def test_an_upload_is_read_back_chunk_by_chunk_once_complete(store: AnyStore) -> None:
    """Two full chunks and a short last one, and a thumbnail: what was written is read back,
    chunk by chunk, and nothing beyond. Until completed, the upload is invisible to
    attachment_for and attachments_to_send, even to its owner."""
    file = secrets.token_bytes(2 * ATTACHMENT_CHUNK + 1234)
    thumbnail = secrets.token_bytes(5000)
    async with asyncio.timeout(TIMEOUT):
        await add_sessions(store, ("a-1", A))
        record = await upload(store, A, file, thumbnail=thumbnail, image=True, complete=False)
        assert await store.attachment_for(record.id, A, "a-1") is None
        assert await store.attachments_to_send([record.id], A) is None
        await store.complete_attachment(record.id)
        assert await store.attachment_for(record.id, A, "a-1") == record
        assert await store.attachments_to_send([record.id], A) == [record]
        assert [len(await store.attachment_chunk(record.id, FILE_PART, n) or b"") for n in range(4)] == [
            ATTACHMENT_CHUNK, ATTACHMENT_CHUNK, 1234, 0]
        assert await store.attachment_chunk(record.id, FILE_PART, 3) is None
        assert await read_part(store, record.id, FILE_PART) == file
        assert await read_part(store, record.id, THUMBNAIL_PART) == thumbnail
        assert record.wire() == {"id": record.id, "name": record.name, "content_type": "image/png",
                                 "size": len(file), "width": 640, "height": 480, "thumbnail": True}
        assert await store.attachment_for(new_id(), A, "a-1") is None  # unknown: None alike


async def test_attachments_to_send_are_the_owners_complete_unclaimed_ones_in_order(
        store: AnyStore) -> None:
    async with asyncio.timeout(TIMEOUT):
        await prepare(store)
        one, two, three = [await small(store, A) for _ in range(3)]
        others = await small(store, C)
        unfinished = await small(store, A, complete=False)
        assert await store.attachments_to_send([three.id, one.id, two.id], A) == [three, one, two]
        assert await store.attachments_to_send([], A) == []
        for ids in ([one.id, others.id], [one.id, unfinished.id], [one.id, new_id()],
                    [one.id, one.id]):
            assert await store.attachments_to_send(ids, A) is None, ids
        assert await send(store, "personal", T1, "claims two", [two.id]) == Stored([B], 1)
        assert await store.attachments_to_send([one.id, two.id], A) is None
        assert await store.attachments_to_send([one.id, three.id], A) == [one, three]


# -- quota ----------------------------------------------------------------------------------------


async def test_the_quota_counts_files_and_thumbnails_of_everything_the_owner_has(
        store: AnyStore, place: Place) -> None:
    """limits.attachment_quota_bytes: an upload is refused when the owner's attachments
    (complete or not, claimed or not) with its size and thumbnail would pass the quota; up to the
    quota exactly is allowed. A refused upload stores nothing; another owner has a quota of its own."""
    quota = 10_000
    async with asyncio.timeout(TIMEOUT):
        await prepare(store)
        claimed = await upload(store, A, b"c" * 3000, thumbnail=b"t" * 1000)
        assert await send(store, "personal", T1, "with it", [claimed.id])
        await upload(store, A, b"u" * 2000, complete=False)  # incomplete, unclaimed
        await upload(store, A, b"x" * 1500, thumbnail=b"t" * 500)  # complete, unclaimed: 8000 in all
        refused = Attachment(new_id(), A, "big", "image/png", 1500, 10, 10, 501)
        with pytest.raises(QuotaExceeded):
            await store.reserve_attachment(refused, quota)  # 8000 + 2001
        assert await left(place, refused.id) == (0, 0)
        assert await store.attachment_bytes() == 8000
        with pytest.raises(QuotaExceeded):  # the thumbnail counts alone too
            await store.reserve_attachment(Attachment(new_id(), A, "t", "image/png", 0, 1, 1, 2001), quota)
        with pytest.raises(QuotaExceeded):
            await store.reserve_attachment(Attachment(new_id(), A, "f", "application/pdf", 2001), quota)
        await store.reserve_attachment(Attachment(new_id(), A, "exact", "image/png", 1500, 10, 10, 500),
                                       quota)
        with pytest.raises(QuotaExceeded):
            await store.reserve_attachment(Attachment(new_id(), A, "one byte", "text/plain", 1), quota)
        # B's quota is B's
        await store.reserve_attachment(Attachment(new_id(), B, "b's", "application/pdf", quota), quota)
        assert await store.attachment_bytes() == 10_000 + quota
        # the claimed one goes with its message: room again
        assert await store.ack_personal(A, B, T1, R1, "b-1") is Ack.FIRST
        assert await store.ack_personal(B, A, T1, R1, "a-2") is Ack.LATER  # A's copy
        await store.reserve_attachment(Attachment(new_id(), A, "again", "image/png", 3000, 1, 1, 1000),
                                       quota)


def fits(sizes: Sequence[int], quota: int) -> list[bool]:
    """Which of `sizes`, reserved in this order, fit in `quota` (each refused one takes nothing)."""
    used, out = 0, []
    for size in sizes:
        out.append(used + size <= quota)
        used += size if out[-1] else 0
    return out


async def test_reserves_at_once_past_the_quota_let_exactly_the_ones_that_fit_through(
        store: AnyStore, place: Place) -> None:
    """Uploads at once (one batch) are counted one after the other, in submission order: a
    refused one does not keep a later, smaller one out."""
    quota = 1000
    sizes = [400, 300, 400, 200, 150, 100, 60, 50, 40, 30]
    expected = fits(sizes, quota)
    assert expected != sorted(expected, reverse=True)  # the case: a refused one before a fitting one
    async with asyncio.timeout(TIMEOUT):
        records = [Attachment(new_id(), A, f"n{i}", "application/pdf", size - size // 4, None, None,
                              size // 4) for i, size in enumerate(sizes)]
        results = await asyncio.gather(*(store.reserve_attachment(r, quota) for r in records),
                                       return_exceptions=True)
        assert [r is None for r in results] == expected, results
        assert all(isinstance(r, QuotaExceeded) for r in results if r is not None), results
        assert await store.attachment_bytes() == sum(s for s, ok in zip(sizes, expected, strict=True) if ok)
        assert sorted(r[0] for r in await place_rows(place, "SELECT id FROM attachments")) == sorted(
            r.id for r, ok in zip(records, expected, strict=True) if ok)


async def test_pg_reserves_in_two_processes_at_once_never_pass_the_quota(
        pg_store: PgStore, pg_url: str) -> None:
    """Two stores on one schema, as two server processes, each reserving uploads of one owner
    at the same moment: exactly as many as fit succeed (the owner's row is locked by each
    reserve: without it both would count the same total)."""
    quota, size, each = 1000, 150, 8
    async with asyncio.timeout(3 * TIMEOUT), opened(pg_url) as second:
        for round_ in range(10):
            owner = f"20000000{round_:02d}"
            assert await pg_store.add_user(owner, "o", b"hash")
            results = await asyncio.gather(
                *(s.reserve_attachment(Attachment(new_id(), owner, "n", "text/plain", size), quota)
                  for _ in range(each) for s in (pg_store, second)), return_exceptions=True)
            assert all(r is None or isinstance(r, QuotaExceeded) for r in results), results
            assert results.count(None) == quota // size, (round_, results)


# -- claiming -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
async def test_a_message_claims_its_attachments_in_the_order_it_names_them(
        store: AnyStore, place: Place, kind: Kind) -> None:
    """The message carries its attachments as frames do (SPEC 8: width and height for images
    only), in its order: not the upload order, nor the ids' order. A message without any
    carries an empty list."""
    async with asyncio.timeout(TIMEOUT):
        await prepare(store)
        photo = await upload(store, A, b"p" * 300, thumbnail=b"t" * 30, image=True,
                             attachment_id=new_id("a"))
        document = await upload(store, A, b"d" * 200, attachment_id=new_id("b"))
        bare = await upload(store, A, b"b" * 100, image=True, attachment_id=new_id("c"))
        assert await send(store, kind, T1, "before", []) is not None
        assert await send(store, kind, T2, "three", [bare.id, photo.id, document.id]) is not None
        assert await send(store, kind, T3, "after", []) is not None
        assert await carried(store, kind) == [("before", []), ("three", wires(bare, photo, document)),
                                              ("after", [])]
        photo_wire, document_wire, bare_wire = photo.wire(), document.wire(), bare.wire()
        assert (photo_wire["width"], photo_wire["height"], photo_wire["thumbnail"]) == (640, 480, True)
        assert "width" not in document_wire and "height" not in document_wire
        assert document_wire["thumbnail"] is False and bare_wire["thumbnail"] is False
        if kind != "room":  # A's other device's copy carries them too (SPEC 7.2)
            page = (await store.pending_page("a-2", 0, 10) if kind == "personal"
                    else await store.pending_group_page("a-2", 0, 10))
            assert [m.attachments for _, m in page] == [[], wires(bare, photo, document), []]
        assert await store.attachments_to_send([photo.id], A) is None  # claimed
        column = {"personal": "personal_id", "group": "group_id", "room": "room_id"}[kind]
        rows = await place_rows(place, f"SELECT count(DISTINCT {column}) FROM attachments"
                                       f" WHERE {column} IS NOT NULL")
        assert rows == [(1,)]


Fault = Literal["someone else's", "incomplete", "claimed", "unknown"]


@pytest.mark.parametrize("fault", ["someone else's", "incomplete", "claimed", "unknown"])
@pytest.mark.parametrize("kind", KINDS)
async def test_a_message_naming_an_attachment_it_may_not_claim_fails_alone_in_its_batch(
        store: AnyStore, place: Place, kind: Kind, fault: Fault) -> None:
    """SPEC 8: each id must be one the sender uploaded, completely, and did not attach to another
    message; otherwise the write fails with AttachmentRefused and nothing of it is stored (its
    other attachment stays unclaimed), while the writes submitted with it commit."""
    async with asyncio.timeout(TIMEOUT):
        await prepare(store)
        taken = await small(store, A)
        assert await send(store, kind, T1, "took it", [taken.id]) is not None
        bad = {"someone else's": (await small(store, C)).id,
               "incomplete": (await small(store, A, complete=False)).id,
               "claimed": taken.id,
               "unknown": new_id()}[fault]
        fine, own, later = [await small(store, A) for _ in range(3)]
        trace = await trace_writer(store)
        results = await asyncio.gather(send(store, kind, T2, "fine", [fine.id]),
                                       send(store, kind, T3, "refused", [own.id, bad]),
                                       send(store, kind, T3 + 1, "later", [later.id]),
                                       return_exceptions=True)
        assert isinstance(results[1], AttachmentRefused), results
        assert results[0] is not None and results[2] is not None and not any(
            isinstance(r, BaseException) for r in (results[0], results[2])), results
        assert trace.count("COMMIT") == 1  # one batch, in which the good writes committed
        assert await carried(store, kind) == [("took it", wires(taken)), ("fine", wires(fine)),
                                              ("later", wires(later))]
        assert await store.attachments_to_send([own.id], A) == [own]  # not claimed by the refused
        if fault != "unknown":  # the attachment at fault is as it was
            assert await left(place, bad) != (0, 0)
            assert await store.attachment_for(bad, A, "a-1") == (
                None if fault in ("someone else's", "incomplete") else taken)
        # the refused message itself was not stored: sent again with what it may claim, it is new
        assert await send(store, kind, T3, "refused", [own.id]) is not None
        assert (await carried(store, kind))[-1] == ("refused", wires(own))


async def test_two_messages_naming_one_attachment_at_once_exactly_one_gets_it(
        store: AnyStore) -> None:
    """In one batch: two personal messages (one statement claims for both), then a personal and
    a room message (two statements): the first claims it, the second is refused."""
    async with asyncio.timeout(TIMEOUT):
        await prepare(store)
        for kinds in (("personal", "personal"), ("personal", "room"), ("room", "group")):
            record = await small(store, A)
            base = now_micros()
            results = await asyncio.gather(send(store, kinds[0], base, "first", [record.id]),
                                           send(store, kinds[1], base + 1, "second", [record.id]),
                                           return_exceptions=True)
            assert results[0] is not None and not isinstance(results[0], BaseException), results
            assert isinstance(results[1], AttachmentRefused), results
            assert (await carried(store, kinds[0]))[-1] == ("first", wires(record))
            assert "second" not in [body for body, _ in await carried(store, kinds[1])]


async def test_pg_two_processes_naming_one_attachment_at_once_exactly_one_gets_it(
        pg_store: PgStore, pg_url: str) -> None:
    """The same across two stores on one schema: the claim that comes second waits for the
    first's row lock, then finds the attachment claimed."""
    async with asyncio.timeout(3 * TIMEOUT), opened(pg_url) as second:
        await prepare(pg_store)
        wins = {0: 0, 1: 0}
        for i in range(30):
            record = await small(pg_store, A)
            results = await asyncio.gather(
                pg_store.add_personal(A, B, i, f"t{i}", f"from the first {i}", None, [record.id]),
                second.add_personal(A, C, i, f"t{i}", f"from the second {i}", None, [record.id]),
                return_exceptions=True)
            won = [k for k, r in enumerate(results) if isinstance(r, Stored)]
            assert len(won) == 1 and isinstance(results[1 - won[0]], AttachmentRefused), results
            wins[won[0]] += 1
            recipient = "b-1" if won[0] == 0 else "c-1"
            assert await pg_store.attachment_for(record.id, [B, C][won[0]], recipient) == record
            assert await pg_store.attachment_for(record.id, [B, C][1 - won[0]], "x") is None
        # each message waited for its recipient: both sides stored some, and only what won
        assert len(await pg_store.pending_for(B)) == wins[0]
        assert len(await pg_store.pending_for(C)) == wins[1]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_retry_of_a_stored_message_returns_none_and_claims_nothing(
        store: AnyStore, kind: Kind) -> None:
    """SPEC 5.1: a retry (the same identity) is not stored twice, whatever attachments it
    names; also when it comes in the same batch as the message itself."""
    async with asyncio.timeout(TIMEOUT):
        await prepare(store)
        first, other = await small(store, A), await small(store, A)
        assert await send(store, kind, T1, "once", [first.id]) is not None
        assert await send(store, kind, T1, "once", [first.id]) is None
        assert await send(store, kind, T1, "once", [other.id]) is None
        assert await store.attachments_to_send([other.id], A) == [other]
        third = await small(store, A)
        trace = await trace_writer(store)
        results = await asyncio.gather(send(store, kind, T2, "twice", [third.id]),
                                       send(store, kind, T2, "twice", [third.id]))
        assert results[0] is not None and results[1] is None, results
        # the retry did not try to claim it again (which would fail the batch, then split it)
        assert (trace.count("COMMIT"), trace.count("ROLLBACK")) == (1, 0)
        assert await carried(store, kind) == [("once", wires(first)), ("twice", wires(third))]


async def test_a_message_refused_for_a_full_mailbox_claims_nothing(place: Place) -> None:
    """SPEC 10's limit refuses a personal message to a full mailbox, and a group message when
    every other participant's is full: its attachments stay unclaimed, for the sender to send
    again. A group message that reaches some participants claims its own."""
    async with opened(place, max_waiting=1) as store, asyncio.timeout(TIMEOUT):
        await prepare(store)
        personal, group, reaches = [await small(store, A) for _ in range(3)]
        assert await send(store, "personal", T1, "fills B's", []) == Stored([B], 1)
        with pytest.raises(MailboxFull):
            await send(store, "personal", T2, "B is full", [personal.id])
        assert await send(store, "group", T1, "fills C's", [reaches.id]) == Stored([C], 1)
        with pytest.raises(MailboxFull):
            await send(store, "group", T2, "everyone is full", [group.id])
        assert await store.attachments_to_send([personal.id, group.id], A) == [personal, group]
        assert [m.attachments for _, m in await store.pending_group_page("c-1", 0, 10)] == [
            wires(reaches)]


# -- who may download (SPEC 8) ------------------------------------------------------------------


async def test_who_may_download_an_attachment(store: AnyStore) -> None:
    """The owner; the personal recipient; a current participant of the group (one removed no
    longer); for a room, anyone when it is public, else its creator and a user who gave its
    password (from any of their sessions, issue 18); an unclaimed upload only its owner.
    Everyone else gets None, as for no such id."""
    async with asyncio.timeout(TIMEOUT):
        await prepare(store)
        await add_sessions(store, ("b-2", B), ("c-2", C))
        assert await store.create_room("secret", B, b"password hash")
        await store.grant_room("c-1", "secret")
        unclaimed, personal, group, public, private = [await small(store, A) for _ in range(5)]
        assert await send(store, "personal", T1, "p", [personal.id])
        assert await send(store, "group", T1, "g", [group.id])
        assert await send(store, "room", T1, "r", [public.id])
        assert await store.add_room_message("secret", A, T1, "t1", "s", [private.id])

        async def who(record: Attachment) -> list[str]:
            """The (phone, session) pairs that may download `record`, as "phone/session"."""
            pairs = [(A, "a-1"), (B, "b-1"), (B, "b-2"), (C, "c-1"), (C, "c-2"), (D, "d-1")]
            found = []
            for phone, sid in pairs:
                got = await store.attachment_for(record.id, phone, sid)
                assert got in (None, record)
                if got is not None:
                    found.append(f"{phone}/{sid}")
            return found

        everyone = [f"{A}/a-1", f"{B}/b-1", f"{B}/b-2", f"{C}/c-1", f"{C}/c-2", f"{D}/d-1"]
        assert await who(unclaimed) == [f"{A}/a-1"]
        assert await who(personal) == [f"{A}/a-1", f"{B}/b-1", f"{B}/b-2"]
        assert await who(group) == everyone[:5]
        assert await who(public) == everyone
        # the uploader, the room's creator (any session), and C, who gave the password (on c-1)
        assert await who(private) == [f"{A}/a-1", f"{B}/b-1", f"{B}/b-2", f"{C}/c-1", f"{C}/c-2"]
        await store.update_group(G, remove=[C])
        assert await who(group) == everyone[:3]
        await store.update_group(G, add=[D])  # a participant now: SPEC 8's "the group's participants"
        assert await who(group) == [*everyone[:3], f"{D}/d-1"]


# -- lifetime: with its message -----------------------------------------------------------------


async def assert_gone(store: AnyStore, place: Place, *records: Attachment) -> None:
    for record in records:
        assert await store.attachment_for(record.id, record.owner, "a-1") is None
        assert await store.attachment_chunk(record.id, FILE_PART, 0) is None
        assert await left(place, record.id) == (0, 0)


async def assert_kept(store: AnyStore, place: Place, *records: Attachment) -> None:
    for record in records:
        assert await store.attachment_for(record.id, record.owner, "a-1") == record
        assert await store.attachment_chunk(record.id, FILE_PART, 0) is not None
        assert (await left(place, record.id))[0] == 1


async def test_a_personal_message_s_attachments_go_at_its_last_acknowledgement(
        store: AnyStore, place: Place) -> None:
    """Kept while any device waits for the message (B's two devices, A's other device's copy),
    with their thumbnails; gone, every chunk, with the last acknowledgement."""
    async with asyncio.timeout(TIMEOUT):
        await prepare(store)
        await add_sessions(store, ("b-2", B))
        photo = await upload(store, A, b"p" * (ATTACHMENT_CHUNK + 10), thumbnail=b"t" * 10, image=True)
        document = await small(store, A)
        stays = await small(store, A)
        assert await send(store, "personal", T1, "two", [photo.id, document.id]) == Stored([B], 1)
        assert await send(store, "personal", T2, "stays", [stays.id]) == Stored([B], 1)
        assert await left(place, photo.id) == (1, 3)
        assert await store.ack_personal(A, B, T1, R1, "b-1") is Ack.FIRST
        assert await store.ack_personal(A, B, T1, R2, "b-2") is Ack.LATER
        await assert_kept(store, place, photo, document)  # A's copy still waits on a-2
        assert await store.attachment_for(photo.id, B, "b-1") == photo
        assert await store.ack_personal(B, A, T1, R2, "a-2") is Ack.LATER
        await assert_gone(store, place, photo, document)
        await assert_kept(store, place, stays)


async def test_a_group_message_s_attachments_go_at_its_last_acknowledgement(
        store: AnyStore, place: Place) -> None:
    async with asyncio.timeout(TIMEOUT):
        await prepare(store)
        record = await small(store, A, thumbnail=b"t" * 10, image=True)
        assert await send(store, "group", T1, "g", [record.id]) == Stored([B, C], 1)
        assert await store.ack_group(G, A, T1, B, "b-1") is Ack.FIRST
        assert await store.ack_group(G, A, T1, A, "a-2") is Ack.LATER
        await assert_kept(store, place, record)
        assert await store.ack_group(G, A, T1, C, "c-1") is Ack.FIRST
        await assert_gone(store, place, record)


async def test_a_room_message_s_attachments_go_when_it_leaves_the_history(place: Place) -> None:
    """[rooms] keep = 2: the third message pushes the first out, with its attachment."""
    async with opened(place, rooms_keep=2) as store, asyncio.timeout(TIMEOUT):
        await prepare(store)
        one, two, three = [await small(store, A, thumbnail=b"t", image=True) for _ in range(3)]
        for i, record in enumerate((one, two)):
            assert await send(store, "room", T1 + i, f"m{i}", [record.id]) is not None
        await assert_kept(store, place, one, two)
        assert await send(store, "room", T3, "m2", [three.id]) is not None
        await assert_gone(store, place, one)
        await assert_kept(store, place, two, three)
        assert [(m.message, m.attachments) for m in await store.room_history(ROOM, 10)] == [
            ("m1", wires(two)), ("m2", wires(three))]


async def test_expired_messages_take_their_attachments_and_leave_unclaimed_ones(
        store: AnyStore, place: Place) -> None:
    async with asyncio.timeout(TIMEOUT):
        await prepare(store)
        personal, group, unclaimed = [await small(store, A) for _ in range(3)]
        assert await send(store, "personal", T1, "p", [personal.id])
        assert await send(store, "group", T1, "g", [group.id])
        assert len(await store.expire(now_micros(), 100)) == 2
        await assert_gone(store, place, personal, group)
        await assert_kept(store, place, unclaimed)


async def test_drop_unclaimed_takes_only_unclaimed_uploads_made_before_the_cutoff(
        store: AnyStore, place: Place) -> None:
    """attachments.unclaimed_seconds: complete or not (an upload cut off half way too); a
    claimed one stays with its message, a newer one stays for its message to come."""
    async with asyncio.timeout(TIMEOUT):
        await prepare(store)
        old = await small(store, A, thumbnail=b"t", image=True)
        cut_off = await upload(store, A, b"h" * 1000, complete=False)
        claimed = await small(store, A)
        assert await send(store, "room", T1, "r", [claimed.id]) is not None
        cutoff = now_micros()
        newer = await small(store, A)
        newer_unfinished = await upload(store, A, b"n" * 100, complete=False)
        assert await store.drop_unclaimed_attachments(cutoff) == 2
        await assert_gone(store, place, old, cut_off)
        await assert_kept(store, place, claimed, newer)
        assert await left(place, newer_unfinished.id) == (1, 1)
        assert await store.drop_unclaimed_attachments(cutoff) == 0
        assert await store.drop_unclaimed_attachments(now_micros()) == 2
        await assert_gone(store, place, newer, newer_unfinished)
        await assert_kept(store, place, claimed)


async def test_attachment_bytes_counts_files_and_thumbnails(store: AnyStore) -> None:
    async with asyncio.timeout(TIMEOUT):
        await prepare(store)
        assert await store.attachment_bytes() == 0
        claimed = await upload(store, A, b"a" * 1000, thumbnail=b"t" * 100, image=True)
        await upload(store, B, b"b" * 500, complete=False)
        await upload(store, C, b"c" * 20)
        assert await store.attachment_bytes() == 1620
        assert await send(store, "personal", T1, "p", [claimed.id])
        assert await store.attachment_bytes() == 1620
        assert len(await store.expire(now_micros(), 10)) == 1
        assert await store.attachment_bytes() == 520


# -- the bytes are gone (SPEC 6, 8) ---------------------------------------------------------------

How = Literal["acknowledged", "room trimmed", "expired", "unclaimed", "upload failed"]
HOWS: Final[tuple[How, ...]] = ("acknowledged", "room trimmed", "expired", "unclaimed", "upload failed")


async def let_go(store: AnyStore, how: How, record: Attachment) -> None:
    """Make A's complete upload `record` go the way `how` says, with a message that carries it
    where there is one (a store opened with rooms_keep=1 trims the room), or unclaimed; then
    check that the store no longer has it."""
    if how == "acknowledged":  # by B's device and by A's other device (the copy)
        assert await send(store, "personal", T1, "p", [record.id]) == Stored([B], 1)
        assert await store.ack_personal(A, B, T1, R1, "b-1") is Ack.FIRST
        assert await store.ack_personal(B, A, T1, R1, "a-2") is Ack.LATER
    elif how == "room trimmed":
        assert await send(store, "room", T1, "r", [record.id]) is not None
        assert await send(store, "room", T2, "pushes it out", []) is not None
    elif how == "expired":
        assert await send(store, "group", T1, "g", [record.id]) == Stored([B, C], 1)
        assert len(await store.expire(now_micros(), 10)) == 1
    elif how == "unclaimed":
        assert await store.drop_unclaimed_attachments(now_micros()) == 1
    else:
        await store.delete_attachment(record.id)
    assert await store.attachment_chunk(record.id, FILE_PART, 0) is None


@pytest.mark.backends(backends.LOCAL)
@pytest.mark.parametrize("how", HOWS)
async def test_scrub_removes_a_deleted_attachment_s_bytes_from_the_file_and_the_wal(
        db_path: Path, how: How) -> None:
    """Each chunk (a full one, on overflow pages; the short last one; the thumbnail) holds a
    pattern of its own; after the attachment goes and the scrub, none of them is in the
    database file or its WAL, while another attachment's bytes are still there."""
    needles = [marker() for _ in range(3)]
    file = pattern(needles[0], ATTACHMENT_CHUNK) + pattern(needles[1], 3000)
    thumbnail = pattern(needles[2], 2000)
    stays = marker()
    async with opened(db_path, rooms_keep=1) as store, asyncio.timeout(TIMEOUT):
        await prepare(store)
        record = await upload(store, A, file, thumbnail=thumbnail, image=True)
        for needle in needles:
            assert files_holding(db_path, needle), "control: the stored bytes are in the files"
        await let_go(store, how, record)
        kept = await upload(store, A, pattern(stays, 4000))
        await store.scrub()
        for needle in needles:
            assert files_holding(db_path, needle) == [], needle
        assert files_holding(db_path, stays) == [db_path.name]  # checkpointed into the main file
        assert await read_part(store, kept.id, FILE_PART) == pattern(stays, 4000)


@pytest.mark.backends(backends.LOCAL)
@pytest.mark.parametrize("how", HOWS)
async def test_the_writer_scrubs_a_deleted_attachment_by_itself(db_path: Path, how: How) -> None:
    """Without anyone calling scrub(): within scrub_seconds of whatever deleted it (the
    retention loop's drop of unclaimed uploads, a failed upload's delete included)."""
    scrub_seconds = 0.3
    needle = marker()
    async with opened(db_path, scrub_seconds=scrub_seconds, rooms_keep=1) as store:
        async with asyncio.timeout(TIMEOUT):
            loop = asyncio.get_running_loop()
            await prepare(store)
            record = await upload(store, A, pattern(needle, ATTACHMENT_CHUNK + 100))
            assert files_holding(db_path, needle), "control: the stored bytes are in the files"
            await let_go(store, how, record)
            deadline = loop.time() + scrub_seconds + 3.0  # generous slack for a loaded machine
            while files_holding(db_path, needle):  # poll for the background effect, no fixed wait
                assert loop.time() < deadline, f"bytes still in {files_holding(db_path, needle)}"
                await asyncio.sleep(0.02)


async def test_pg_scrub_vacuums_the_attachment_tables(pg_store: PgStore, pg_url: str) -> None:
    async with asyncio.timeout(TIMEOUT), connected(pg_url) as other:
        counts = ("SELECT relname, vacuum_count FROM pg_stat_user_tables"
                  " WHERE schemaname = current_schema() AND relname LIKE 'attachment%' ORDER BY 1")
        before = dict(await other.fetch(counts))
        assert set(before) == {"attachment_chunks", "attachments"}
        await pg_store.scrub()
        after = dict(await other.fetch(counts))
        assert all(after[t] == before[t] + 1 for t in before), (before, after)


# Tuples of attachment_chunks and of its TOAST table whose data hold $1 (pageinspect).
_CHUNK_TUPLES_HOLDING: Final = """
    SELECT count(*) FROM (VALUES ('attachment_chunks'::regclass), ((SELECT reltoastrelid FROM pg_class
                                  WHERE oid = 'attachment_chunks'::regclass)::regclass)) AS r(rel),
         generate_series(0, pg_relation_size(r.rel) / current_setting('block_size')::int - 1) AS b,
         {schema}.heap_page_items({schema}.get_raw_page(r.rel::text, b::int)) AS t
    WHERE position($1::bytea IN t.t_data) > 0"""


@pytest.mark.parametrize("how", HOWS)
async def test_pg_after_scrub_no_tuple_holds_a_deleted_attachment_s_bytes(
        pg_url: str, how: How) -> None:
    """As test_store_contract's check of bodies: the deleted chunks' tuples (a full chunk in the
    TOAST table, a short one and a thumbnail in the table's own pages) are removed by the scrub's
    VACUUM. (Their bytes may stay in a page's free space until overwritten: docs/storage.md.)"""
    needles = [marker() for _ in range(3)]
    # random bytes do not compress: each chunk is stored with its marker as it is
    file = needles[0] + secrets.token_bytes(ATTACHMENT_CHUNK - len(needles[0])) + needles[1]
    thumbnail = needles[2] + secrets.token_bytes(100)
    async with opened(pg_url, rooms_keep=1) as store, connected(pg_url) as other:
        async with asyncio.timeout(TIMEOUT):
            try:
                await other.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")  # in the test schema
                schema = await other.fetchval("SELECT extnamespace::regnamespace::text FROM pg_extension"
                                              " WHERE extname = 'pageinspect'")
                tuples_holding = _CHUNK_TUPLES_HOLDING.format(schema=schema)
                await other.fetchval(tuples_holding, b"x")
            except asyncpg.PostgresError as e:  # not installed, or not a superuser
                pytest.skip(f"pageinspect is not usable here: {e}")
            await prepare(store)
            record = await upload(store, A, file, thumbnail=thumbnail, image=True)
            for needle in needles:
                assert await other.fetchval(tuples_holding, needle) == 1, "control: stored"
            await let_go(store, how, record)
            assert await other.fetchval(tuples_holding, needles[0]) == 1, \
                "control: a deleted row stays in its tuple until VACUUM"
            await store.scrub()
            for needle in needles:
                assert await other.fetchval(tuples_holding, needle) == 0, needle
