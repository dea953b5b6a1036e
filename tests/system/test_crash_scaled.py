"""Crashes on the scaled deployment (SPEC 6, README "Guarantees" and "Scaling out"): two
`run.py serve` processes on two ports share one PostgreSQL schema and one Redis prefix; users are
spread over both, and server 1 is killed with SIGKILL, on its own pid, while senders send and
receivers acknowledge hundreds of personal and group messages. Server 2 keeps serving; server 1
is restarted on its port, and every client reconnects (to its own server), fetches and
acknowledges everything.

Who is where: users 0, 2, 4 on server 1 and 1, 3, 5 on server 2. The three dialogues (0-1, 2-3,
4-5) each cross the two processes, both ways: what server 1 was committing as a sender's process
or as a receiver's (the acknowledgements) dies with it, while pushes and receipts for its users
cross over Redis. The group (0, 2 on server 1; 3, 5 on server 2) spans both.

What is asserted is test_crash.py's `Ledger.verdict` (tests/helpers/chatload.py): nothing known committed
(msg_sent seen, or pushed or fetched to anyone) is lost, nothing whose acknowledgement was proven
(its receipt pushed to the sender) comes back, nothing unknown, altered, twice in one phase or out
of order, no error frame, and no message row left in PostgreSQL after the drain.

Server 2 does not stop at the kill, so before the drain it is brought to rest: server 2's users
stop acknowledging, write one more message on each of their send sockets and wait for every
msg_sent they are owed (server 2 is alive: all of them must come). A socket's writes commit in the
order of its frames, so every acknowledgement those sockets carried is committed by then, and the
drain's fetches cannot race a late one. Then every socket is closed and the drain starts.

Marked `crash` and repeated CRASH_RUNS times (default 3) on one schema, each kill at a random
moment into the load (seed printed; CRASH_SEED repeats a run). Skipped unless both
CHAT_TEST_POSTGRES_URL and CHAT_TEST_REDIS_URL are set.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from helpers import backends
from helpers.chatload import (
    CRASH_RUNS,
    CRASH_SEED,
    MESSAGE_TABLES,
    ChatNet,
    Ledger,
    kill_9,
    make_party,
    phones,
)
from helpers.configs import scaled_config_tables
from helpers.server import ServerProcess, start_server, write_config
from helpers.timing import NET_TIMEOUT, until

# Frames each send socket keeps waiting for their msg_sent.
WINDOW = 40
# The kill must find at least this many messages written and not yet proven acknowledged.
MIN_IN_FLIGHT = 150
KILL_AFTER = (0.3, 1.5)

pytestmark = pytest.mark.skipif(
    not (backends.POSTGRES_URL and backends.REDIS_URL),
    reason=f"{backends.POSTGRES_ENV} and {backends.REDIS_ENV} must both be set: the scaled crash "
           "test needs a PostgreSQL store and a Redis hub")


async def count_rows(database_url: str) -> dict[str, int]:
    """The rows of the message tables, read from PostgreSQL in this test's schema."""
    conn = await asyncpg.connect(database_url, timeout=NET_TIMEOUT)
    try:
        return {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}", timeout=NET_TIMEOUT))
                for t in MESSAGE_TABLES}
    finally:
        await conn.close(timeout=NET_TIMEOUT)


@dataclass
class Run:
    """What one run saw at the kill (the ledger holds the rest)."""

    delay: float
    in_flight: int      # written and not proven acknowledged
    unconfirmed: int    # of those, still awaiting msg_sent
    unconfirmed_one: int  # of those, written by server 1's users


async def kill_one_and_rest_two(load: ChatNet, one: ServerProcess, two: ServerProcess,
                                on_one: list[str], members: list[str]) -> None:
    """SIGKILL server 1 (stopping the pumps at once), wait for its sockets to end, then bring
    server 2 to rest: nothing more acknowledged, one more message on each of its users' send
    sockets, every msg_sent they are owed seen."""
    load.ledger.ack_probability = 0.0  # from the kill on, nothing more is acknowledged
    await kill_9(one, load)
    killed = [t for u in load.users if u.phone in on_one for t in u.readers]
    await until(lambda: all(t.done() for t in killed), NET_TIMEOUT,
                lambda: f"{sum(not t.done() for t in killed)} sockets of the killed server open")
    pumps = [t for u in load.users for t in u.pumps]
    await until(lambda: all(t.done() for t in pumps), NET_TIMEOUT, "the pumps to stop")
    assert two.alive(), f"server 2 died with server 1:\n{two.output()}"
    for user in load.users:
        if user.phone not in on_one:
            await user.flush(members, NET_TIMEOUT)


@pytest.mark.crash
@pytest.mark.timeout(40 + 30 * CRASH_RUNS)
async def test_kill_9_of_one_of_two_servers_loses_nothing_and_repeats_nothing_acknowledged(
        tmp_path: Path) -> None:
    rng = random.Random(CRASH_SEED)
    print(f"\nscaled crash test: {CRASH_RUNS} runs, CRASH_SEED={CRASH_SEED}")
    users = phones(6, "33")
    pairs = [(users[0], users[1]), (users[2], users[3]), (users[4], users[5])]
    members = [users[0], users[2], users[3], users[5]]
    on_one, on_two = users[0::2], users[1::2]
    async with backends.postgres_schema() as database_url, backends.redis_prefix() as prefix:
        config = write_config(tmp_path / "scaled.toml", scaled_config_tables(database_url, prefix))

        def start(name: str, port: int | None = None) -> ServerProcess:
            # The SQLite path is unused: PostgreSQL holds the data.
            return start_server(tmp_path / f"{name}.db", config, tmp_path, port=port)

        one, two = start("one"), start("two")
        servers = [one, two]
        party = None
        try:
            for server in servers:
                await server.wait_serving()
            party = await make_party(one, users, pairs, members)
            figures = []
            for n in range(1, CRASH_RUNS + 1):
                where = dict.fromkeys(on_one, one) | dict.fromkeys(on_two, two)
                ledger = Ledger(ack_probability=0.8, rng=random.Random(rng.random()))
                load, drain = ChatNet(party, ledger), ChatNet(party, ledger)
                delay = rng.uniform(*KILL_AFTER)
                try:
                    await load.connect(where, WINDOW)
                    load.start_load()
                    # The kill moment: random by design, not a synchronisation.
                    await asyncio.sleep(delay)
                    unconfirmed = [m for m in ledger.texts if m not in ledger.confirmed]
                    run = Run(delay, ledger.in_flight(), len(unconfirmed),
                              sum(m[1] in on_one for m in unconfirmed))
                    await kill_one_and_rest_two(load, one, two, on_one, members)
                    await load.close()

                    one = start("one", port=one.port)
                    servers.append(one)
                    await one.wait_serving()
                    where |= dict.fromkeys(on_one, one)
                    await drain.drain(where, lambda: count_rows(database_url))
                finally:
                    await load.close()
                    await drain.close()
                verdict = ledger.verdict()
                print(f"run {n}: kill of server 1 after {run.delay:.2f} s, in flight at the kill "
                      f"{run.in_flight} ({run.unconfirmed} of them awaiting msg_sent, "
                      f"{run.unconfirmed_one} from server 1's users); {verdict.summary()}")
                figures.append(run.in_flight)
                verdict.assert_clean()
                assert two.alive(), two.output()
                assert run.in_flight >= MIN_IN_FLIGHT, f"only {run.in_flight} in flight at the kill"
                # Both kinds of evidence were exercised, across the two processes: proven
                # acknowledgements, and pushed messages left unacknowledged (which must come back).
                assert verdict.proven_before > 0 and verdict.delivered_after > 0, verdict.summary()
                assert {m[0] for m in ledger.confirmed} == {"p", "g"}, "both kinds were committed"
                for side in (on_one, on_two):  # senders on both servers had messages committed
                    assert any(m[1] in side for m in ledger.confirmed), (side, verdict.summary())
            print(f"scaled crash test: {CRASH_RUNS} runs, in flight at the kills {figures}, "
                  "lost 0, duplicates after proven acknowledgement 0")
        finally:
            if party is not None:
                await party.close()
            for server in servers:
                server.kill()
