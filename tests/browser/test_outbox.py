"""The client's outbox against the server's timestamp check (SPEC 10, `security.timestamp_skew_seconds`,
default one day): a message that waited on the device for longer than 12 hours and was never sent
goes out with a new sent_timestamp; one the server may already have keeps its own; one the server
refuses for its time is shown as not sent, with why.

The device's clock is Playwright's (`context.clock`): 30 hours back is past the server's one day.
Every wait is Playwright's auto-waiting with a timeout; nothing sleeps.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from playwright.async_api import expect

from helpers.server import ServerProcess

from .conftest import UserFactory
from .test_client import RECONNECT_MS, A, B, mine, open_dialogue, send, theirs

HOUR_US = 3600 * 1_000_000

# Own messages of conversation `conv` as this device keeps them (IndexedDB, db.js).
READ_RECORDS = """async ([me, conv]) => {
    const {LocalDb} = await import("/static/db.js");
    const db = await LocalDb.open(me);
    const list = await db.page(conv, Infinity, 100);
    db.idb.close();
    return list.map((m) => ({id: m.id, us: m.us, ts: m.ts, body: m.body, state: m.state,
                             tried: m.tried || 0, writtenUs: m.writtenUs || null}));
}"""


async def waiting_for(context: object, live: ServerProcess, peer: str) -> int:
    resp = await context.request.get(live.url(f"/chat/info/personal?msg_to={peer}"))
    assert resp.status == 200, await resp.text()
    return (await resp.json())["outgoing"]["waiting"]


async def test_a_message_queued_offline_for_a_day_is_re_stamped_and_arrives_once(
        people: UserFactory, live: ServerProcess) -> None:
    alice = await people(A, "Alice")
    bob = await people(B, "Bob")
    await alice.context.clock.install(time=datetime.now(UTC) - timedelta(hours=30))
    pa = await alice.page()
    await open_dialogue(pa, B)
    await alice.context.set_offline(True)
    await expect(pa.locator("#offline")).to_be_visible()
    await send(pa, "written yesterday")
    queued = mine(pa, "written yesterday")
    await expect(queued).to_have_attribute("data-state", "pending")
    written_us = int(await queued.get_attribute("data-us"))

    # A day and more later the network is back: the message goes out under a new time, once.
    await alice.context.clock.set_system_time(datetime.now(UTC))
    await alice.context.set_offline(False)
    await expect(queued).to_have_attribute("data-state", "sent", timeout=RECONNECT_MS)
    await expect(queued).to_have_count(1)
    sent_us = int(await queued.get_attribute("data-us"))
    assert sent_us - written_us > 29 * HOUR_US
    title = await queued.locator("time").get_attribute("title")
    assert title.startswith("Sent ") and "(written " in title

    # The device keeps one record, under the identity the server knows, with its writing time.
    records = await pa.evaluate(READ_RECORDS, [A, f"p:{B}"])
    assert [(r["body"], r["us"], r["writtenUs"], r["state"], r["tried"]) for r in records] == [
        ("written yesterday", sent_us, written_us, "sent", 1)]
    assert records[0]["id"] == f"p:{B} {A} {sent_us}"
    assert await waiting_for(alice.context, live, B) == 1

    pb = await bob.page(f"/chat/personal/{B}/{A}/")
    arrived = theirs(pb, "written yesterday")
    await expect(arrived).to_have_count(1)
    assert int(await arrived.get_attribute("data-us")) == sent_us
    await expect(arrived.locator("time")).to_have_text("just now")
    # Receipts and read marks find the re-stamped record.
    await expect(queued).to_have_attribute("data-state", "read")
    await expect(pa.locator("#conversations .conv-last")).to_have_text("You: written yesterday")


async def test_a_message_refused_for_a_wrong_device_clock_says_so_and_retry_sends_it(
        people: UserFactory, live: ServerProcess) -> None:
    alice = await people(A, "Alice")
    bob = await people(B, "Bob")
    await alice.context.clock.install(time=datetime.now(UTC) - timedelta(hours=30))
    pa = await alice.page()
    await open_dialogue(pa, B)
    await send(pa, "from a slow clock")
    refused = mine(pa, "from a slow clock")
    await expect(refused).to_have_attribute("data-state", "failed")
    await expect(refused.locator(".failed-note")).to_contain_text("clock is wrong")
    assert await waiting_for(alice.context, live, B) == 0

    # The clock set right, Retry sends it with a time the server accepts.
    await alice.context.clock.set_system_time(datetime.now(UTC))
    await refused.get_by_role("button", name="Retry").click()
    await expect(refused).to_have_attribute("data-state", "sent")
    await expect(refused.locator(".failed-note")).to_have_count(0)
    pb = await bob.page(f"/chat/personal/{B}/{A}/")
    await expect(theirs(pb, "from a slow clock")).to_have_count(1)
    await expect(refused).to_have_attribute("data-state", "read")


async def test_prepare_send_re_stamps_only_what_the_server_cannot_have(people: UserFactory) -> None:
    """db.prepareSend on a scratch database: never-tried old messages (and the never-tried ones
    after them, in order) get new identities; a tried one keeps its time; one no longer pending is
    never handed out again; two tabs preparing at once re-stamp a message once."""
    alice = await people(A, "Alice")
    pa = await alice.page()
    result = await pa.evaluate("""async () => {
        const {LocalDb} = await import("/static/db.js");
        const {formatTs} = await import("/static/time.js");
        const owner = "test-outbox";
        await new Promise((ok) => { const r = indexedDB.deleteDatabase(`chat-${owner}`);
                                    r.onsuccess = r.onerror = r.onblocked = ok; });
        const one = await LocalDb.open(owner);
        const two = await LocalDb.open(owner);
        const H = 3600e6;
        const now = Date.now() * 1000;
        const conv = "p:5550000002";
        const add = async (us, body, extra = {}) => {
            await one.addOwn({conv, from: "me", us, ts: formatTs(us), body});
            if (Object.keys(extra).length) await one.setState(conv, "me", us, "pending", extra);
        };
        await add(now - 40 * H, "old, sent", {});
        await one.setState(conv, "me", now - 40 * H, "sent");
        await add(now - 30 * H, "old, never tried");
        await add(now - 20 * H, "old, tried", {tried: 1});
        await add(now - 1 * H, "recent, never tried");
        let next = now;
        const stamp = () => { next += 1; return {us: next, ts: formatTs(next)}; };
        const all = [now - 40 * H, now - 30 * H, now - 20 * H, now - 1 * H];
        const opts = {nowUs: now, staleUs: 12 * H, stamp};
        // Two tabs at once: IndexedDB runs the two read-write transactions one after the other.
        const [a, b] = await Promise.all([one.prepareSend(conv, "me", all, opts),
                                          two.prepareSend(conv, "me", all, opts)]);
        const shape = (r) => r.ready.map((x) => [x.record.body, x.record.us - now, !!x.old, x.record.tried]);
        const after = (await one.page(conv, Infinity, 10)).map((m) => [m.body, m.us - now, m.state]);
        const conv_ = await one.getConv(conv);
        one.idb.close(); two.idb.close();
        return {a: shape(a), b: shape(b), after, last: [conv_.lastText, conv_.lastUs - now]};
    }""")
    h = HOUR_US
    # The first tab re-stamps the never-tried old one and the never-tried one after it, in order;
    # the tried one keeps its time; the sent one is not handed out.
    assert result["a"] == [["old, never tried", 1, True, 1], ["old, tried", -20 * h, False, 1],
                           ["recent, never tried", 2, True, 1]]
    # The second tab finds them re-stamped (tried now): it sends the same identities, nothing new.
    assert result["b"] == [["old, tried", -20 * h, False, 1]]
    assert result["after"] == [["old, sent", -40 * h, "sent"], ["old, tried", -20 * h, "pending"],
                               ["old, never tried", 1, "pending"], ["recent, never tried", 2, "pending"]]
    assert result["last"] == ["recent, never tried", 2]
