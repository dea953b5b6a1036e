"""Crashes (SPEC 6, "no acknowledged message is lost"): the real server process (`python run.py
serve`) is killed with SIGKILL, on its own pid, while senders send and receivers acknowledge
hundreds of personal and group messages; it is restarted on the same database and every client
fetches and acknowledges everything.

What a client can know, and so what is asserted (tests/helpers/chatload.py, `Ledger.verdict`):
- a message is known committed when its sender saw `msg_sent`, or anyone got it pushed or fetched
  (the server answers and pushes only after the commit); such a message is delivered at least
  once in total, and after the restart to every recipient who had not sent an acknowledgement;
- an acknowledgement is known committed only when the sender's receive socket got its receipt
  push (`msg_received`, pushed only after the commit; a successful `msg_received` is not
  answered). A message whose acknowledgement was proven before the kill is never delivered
  again, nor left in a group's pending list. One that was pushed and acknowledged without proof
  may or may not come back: at least once until acknowledged, so that is not asserted;
- nothing unknown or altered is delivered, nothing twice in one phase, fetches come oldest
  first per sender, and after the drain no message row is left in the database.

The long test is marked `crash` and repeats CRASH_RUNS times (default 3) on one database, each
kill at a random moment 0.2-1.5 s into the load (seed printed; CRASH_SEED repeats a run).
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import pytest

from helpers.accounts import client, create_group, register, ws_open
from helpers.chatload import CRASH_RUNS, CRASH_SEED, ChatNet, Ledger, kill_9, make_party, message_rows, phones
from helpers.configs import load_config_tables
from helpers.frames import frame, micros
from helpers.server import ServerProcess, start_server, write_config
from helpers.timing import NET_TIMEOUT
from helpers.ws import WS, recv

# Frames each send socket keeps waiting for their msg_sent (the server reads up to 64 ahead).
WINDOW = 40
# The kill must find at least this many messages written and not yet proven acknowledged.
MIN_IN_FLIGHT = 200
KILL_AFTER = (0.2, 1.5)


@pytest.mark.crash
@pytest.mark.timeout(40 + 30 * CRASH_RUNS)
async def test_kill_9_under_load_loses_nothing_and_repeats_nothing_acknowledged(tmp_path: Path) -> None:
    rng = random.Random(CRASH_SEED)
    print(f"\ncrash test: {CRASH_RUNS} runs, CRASH_SEED={CRASH_SEED}")
    db = tmp_path / "chat.db"
    config = write_config(tmp_path / "config.toml", load_config_tables())
    users = phones(6, "31")
    # Three dialogues, both ways, and a group of four (two of them in no dialogue with each other).
    pairs = [(users[0], users[1]), (users[2], users[3]), (users[4], users[5])]
    members = [users[0], users[2], users[4], users[5]]
    servers: list[ServerProcess] = [start_server(db, config, tmp_path)]
    party = None
    try:
        await servers[-1].wait_serving()
        party = await make_party(servers[-1], users, pairs, members)
        figures = []
        for run in range(1, CRASH_RUNS + 1):
            server = servers[-1]
            ledger = Ledger(ack_probability=0.8, rng=random.Random(rng.random()))
            load, drain = ChatNet(party, ledger), ChatNet(party, ledger)
            delay = rng.uniform(*KILL_AFTER)
            try:
                await load.connect(server, WINDOW)
                load.start_load()
                await asyncio.sleep(delay)  # the kill moment: random by design, not a synchronisation
                in_flight, unconfirmed = ledger.in_flight(), len(ledger.texts) - len(ledger.confirmed)
                await kill_9(server, load)
                await load.wait_all_closed(NET_TIMEOUT)
                await load.close()

                servers.append(start_server(db, config, tmp_path, port=server.port))
                await servers[-1].wait_serving()
                await drain.drain(servers[-1], db)
            finally:
                await load.close()
                await drain.close()
            verdict = ledger.verdict()
            print(f"run {run}: kill after {delay:.2f} s, in flight at the kill {in_flight} "
                  f"({unconfirmed} of them awaiting msg_sent); {verdict.summary()}")
            figures.append(in_flight)
            verdict.assert_clean()
            assert in_flight >= MIN_IN_FLIGHT, f"only {in_flight} messages in flight at the kill"
            # Both kinds of evidence were exercised: proven acknowledgements, and pushed messages
            # left unacknowledged (which must come back).
            assert verdict.proven_before > 0 and verdict.delivered_after > 0, verdict.summary()
            assert {mid[0] for mid in ledger.confirmed} == {"p", "g"}, "both kinds were committed"
        print(f"crash test: {CRASH_RUNS} runs, in flight at the kills {figures}, lost 0, "
              f"duplicates after proven acknowledgement 0")
    finally:
        if party is not None:
            await party.close()
        for server in servers:
            server.kill()


# -- one deterministic kill ---------------------------------------------------------------------


async def recv_command(ws: WS, command: str) -> dict[str, Any]:
    """The next frame with this `command`, skipping presence pushes."""
    while True:
        data = await recv(ws, NET_TIMEOUT)
        if data.get("command") != "presence":
            assert data.get("command") == command, data
            return data


async def fetch(ws: WS, phone: str, command: str) -> list[dict[str, Any]]:
    """Every message a fetch answers (its chunks joined)."""
    await ws.send_str(json.dumps({"command": command, "msg_to": phone}))
    out: list[dict[str, Any]] = []
    while True:
        data = await recv_command(ws, command)
        out += data["messages"]
        if data["all"] == "True":
            return out


async def test_kill_9_keeps_a_message_just_confirmed_and_drops_one_just_acknowledged(
        tmp_path: Path) -> None:
    """A kill right after a `msg_sent`: that message is fetched after the restart; messages
    whose receipt was pushed before the kill are gone, for every recipient whose it was."""
    db = tmp_path / "chat.db"
    config = write_config(tmp_path / "config.toml", load_config_tables())
    a, b, c = phones(3, "32")
    servers = [start_server(db, config, tmp_path)]
    sessions = {p: client() for p in (a, b, c)}
    try:
        server = servers[0]
        await server.wait_serving()
        for p in (a, b, c):
            await register(sessions[p], server, p)
        grp = await create_group(sessions[a], server, "trio", [b, c])
        a_recv = await ws_open(sessions[a], server.ws_url(f"/ws/chat/special/{a}/"))
        b_recv = await ws_open(sessions[b], server.ws_url(f"/ws/chat/special/{b}/"))
        c_recv = await ws_open(sessions[c], server.ws_url(f"/ws/chat/special/{c}/"))
        for ws, p in ((a_recv, a), (b_recv, b), (c_recv, c)):  # served: pushes will reach them
            assert await fetch(ws, p, "fetch_msgs") == []
        a_b = await ws_open(sessions[a], server.ws_url(f"/ws/chat/personal/{a}/{b}/"))
        b_a = await ws_open(sessions[b], server.ws_url(f"/ws/chat/personal/{b}/{a}/"))
        a_g = await ws_open(sessions[a], server.ws_url(f"/ws/chat/group/{a}/{grp}/"))
        b_g = await ws_open(sessions[b], server.ws_url(f"/ws/chat/group/{b}/{grp}/"))

        # m1: sent, pushed, acknowledged by B, receipt pushed to A: proven gone.
        m1 = frame("new_msg", a, b, "first")
        await a_b.send_str(json.dumps(m1))
        assert (await recv_command(a_b, "msg_sent"))["message"] == m1["sent_timestamp"]
        assert await recv_command(b_recv, "new_msg") == m1
        await b_a.send_str(json.dumps(frame("msg_received", b, a, m1["sent_timestamp"])))
        assert (await recv_command(a_recv, "msg_received"))["message"] == m1["sent_timestamp"]

        # g1: B's acknowledgement proven, C never acknowledges.
        g1 = frame("new_grp_msg", a, grp, "to the group")
        await a_g.send_str(json.dumps(g1))
        assert (await recv_command(a_g, "msg_sent"))["message"] == g1["sent_timestamp"]
        assert (await recv_command(b_recv, "new_msg"))["message"] == "to the group"
        assert (await recv_command(c_recv, "new_msg"))["message"] == "to the group"
        await b_g.send_str(json.dumps(frame("grp_msg_received", b, a, g1["sent_timestamp"])))
        receipt = await recv_command(a_recv, "msg_received")
        assert (receipt["msg_from"], receipt["message"]) == (f"{grp}-{b}", g1["sent_timestamp"])

        # m2: killed the moment its msg_sent arrives.
        m2 = frame("new_msg", a, b, "second")
        await a_b.send_str(json.dumps(m2))
        assert (await recv_command(a_b, "msg_sent"))["message"] == m2["sent_timestamp"]
        await kill_9(server)

        servers.append(start_server(db, config, tmp_path, port=server.port))
        server = servers[-1]
        await server.wait_serving()
        b_recv = await ws_open(sessions[b], server.ws_url(f"/ws/chat/special/{b}/"))
        c_recv = await ws_open(sessions[c], server.ws_url(f"/ws/chat/special/{c}/"))
        fetched = await fetch(b_recv, b, "fetch_msgs")
        assert [(m["message"], micros(m["sent_timestamp"])) for m in fetched] == \
            [("second", micros(m2["sent_timestamp"]))], fetched
        assert await fetch(b_recv, b, "fetch_grp_msgs") == []
        fetched = await fetch(c_recv, c, "fetch_grp_msgs")
        assert [(m["msg_from"], m["message"], m["pending"]) for m in fetched] == \
            [(f"{grp}-{a}", "to the group", [c])], fetched
        assert await fetch(c_recv, c, "fetch_msgs") == []
        rows = message_rows(db)
        assert rows == {"personal_messages": 1, "group_messages": 1, "group_pending": 1}, rows
    finally:
        for session in sessions.values():
            await session.close()
        for server in servers:
            server.kill()
