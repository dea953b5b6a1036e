"""Figures from runs: percentiles, the median over repeated runs, and the report printed at the end
(the table of figures with units, then the counts that must all be 0).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from typing import Any

import aiohttp
import uvloop

from client import CHECKS
from measure import load_average

Row = tuple[str, str, str, str]  # case, figure, value, unit
MIB = 2 ** 20


def percentile(values: list[float], p: float) -> float | None:
    """The `p`-th percentile (0-100) of `values` by the nearest rank; None when there are none."""
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from repeated runs: the median of every figure, checks and counts summed."""
    out: dict[str, Any] = {}
    for key, first in runs[0].items():
        values: list[Any] = [r.get(key) for r in runs]
        if key in ("checks", "error_texts", "other_frames"):
            merged: dict[str, int] = {}
            for v in values:
                for k, n in (v or {}).items():
                    merged[k] = merged.get(k, 0) + n
            out[key] = merged
        elif key == "finished":
            out[key] = all(values)
        elif isinstance(first, dict):
            out[key] = merge(values)
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            out[key] = statistics.median_low(values)  # counts and sizes stay integers
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            out[key] = statistics.median(values)
        elif isinstance(first, list):
            out[key] = [x for v in values for x in (v or [])]
        else:
            out[key] = first
    return out


def fmt(value: Any, digits: int = 2) -> str:
    """A figure for the table: thousands separated, `digits` decimals for floats, "-" for None."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def spread(r: dict[str, Any], key: str, digits: int) -> str:
    """The median of `key` over a case's runs, with min-max when there were several."""
    runs = r.get("runs", [])
    text = fmt(r.get(key), digits)
    values = [x[key] for x in runs if x.get(key) is not None]
    if len(values) > 1:
        text += f" ({fmt(min(values), digits)}-{fmt(max(values), digits)})"
    return text


def p50_p99(latency: dict[str, float | None]) -> str:
    """"p50 / p99" of a latency's percentiles, in ms to 0.1."""
    return f"{fmt(latency['p50'], 1)} / {fmt(latency['p99'], 1)}"


def load_rows(case: str, m: dict[str, float]) -> list[Row]:
    """Where the CPU went during a measured phase, in cores; in the scaled mode also the load of
    the PostgreSQL and Redis server processes."""
    rows = [(case, "load: server / client / irq+softirq / other processes",
             f"{m['server_cores']:.2f} / {m['client_cores']:.2f} / {m['irq_cores']:.2f}"
             f" / {m['other_cores']:.2f}", "cores")]
    if "total_cpu_s" in m:
        rows.append((case, "load: PostgreSQL (postgres) / Redis (redis-server) processes",
                     f"{m['postgres_cores']:.2f} / {m['redis_cores']:.2f}", "cores"))
    return rows


def table(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    """The table of figures (sections 1-5 and 7), then the counts of section 6 and what they saw."""
    rows: list[Row] = []
    full, normal, dev = results.get("full"), results.get("normal"), results.get("devices")
    grp, idle, fan = results.get("group"), results.get("idle"), results.get("fanout")
    shape = f"{args.pairs} pairs x {args.messages} msgs x window {args.window}"

    def personal_rows(case: str, r: dict[str, Any]) -> None:
        rows.append((case, f"delivered messages, {shape}", spread(r, "delivered_per_s", 0), "msg/s"))
        rows.append((case, "send -> push latency p50 / p99", p50_p99(r["push_ms"]), "ms"))
        rows.append((case, "send -> msg_sent p50 / p99; send -> receipt push p50 / p99",
                     f"{p50_p99(r['ack_ms'])}; {p50_p99(r['receipt_ms'])}", "ms"))
        rows.extend(load_rows(case, r["measured"]))
        rows.append((case, "client CPU per 1000 messages", fmt(r["client_cpu_s_per_1000"], 3),
                     "CPU s / 1000 msgs"))
        rows.append((case, "server RSS before / after / peak",
                     f"{r['server_rss_before'] / MIB:.1f} / {r['server_rss_after'] / MIB:.1f}"
                     f" / {r['server_rss_peak'] / MIB:.1f}", "MiB"))

    for label, r in (("FULL", full), ("NORMAL", normal)):
        if r:
            rows.append(("1. CPU per message", f"server CPU per 1000 delivered messages, "
                         f"synchronous={label} (new_msg..receipt push)",
                         spread(r, "server_cpu_s_per_1000", 3), "CPU s / 1000 msgs"))
            if r.get("total_cpu_s_per_1000") is not None:  # scaled mode: the engines' share
                rows.append(("1. CPU per message", f"PostgreSQL / Redis server processes' CPU per "
                             f"1000 delivered messages, synchronous={label}",
                             f"{fmt(r['postgres_cpu_s_per_1000'], 3)} / "
                             f"{fmt(r['redis_cpu_s_per_1000'], 3)}", "CPU s / 1000 msgs"))
                rows.append(("1. CPU per message", f"total CPU (server + PostgreSQL + Redis) per "
                             f"1000 delivered messages, synchronous={label}",
                             spread(r, "total_cpu_s_per_1000", 3), "CPU s / 1000 msgs"))
    if dev:
        rows.append(("1. CPU per message", "server CPU per 1000 delivered messages, two devices per "
                     "user, synchronous=FULL (on both devices; copies included)",
                     spread(dev, "server_cpu_s_per_1000", 3), "CPU s / 1000 msgs"))
        if dev.get("total_cpu_s_per_1000") is not None:
            rows.append(("1. CPU per message", "total CPU (server + PostgreSQL + Redis) per 1000 "
                         "delivered messages, two devices per user, FULL",
                         spread(dev, "total_cpu_s_per_1000", 3), "CPU s / 1000 msgs"))
        if full and full["server_cpu_s_per_1000"] and dev["server_cpu_s_per_1000"]:
            rows.append(("1. CPU per message", "server CPU per delivered message, two devices / "
                         "one device, FULL (medians)",
                         fmt(dev["server_cpu_s_per_1000"] / full["server_cpu_s_per_1000"], 2),
                         "ratio"))
    off = results.get("full_nometrics")
    if full and off:
        case = "8. metrics on / off"
        rows.append((case, "server CPU per 1000 delivered messages, FULL, metrics on "
                     f"(/metrics scraped every {args.scrape_every:g} s) / off (nothing counted)",
                     f"{spread(full, 'server_cpu_s_per_1000', 3)} / "
                     f"{spread(off, 'server_cpu_s_per_1000', 3)}", "CPU s / 1000 msgs"))
        if off["server_cpu_s_per_1000"]:
            rows.append((case, "server CPU per message, metrics on / off (medians; target <= 1.05)",
                         fmt(full["server_cpu_s_per_1000"] / off["server_cpu_s_per_1000"], 3),
                         "ratio"))
        rows.append((case, "delivered messages per second, metrics on / off",
                     f"{spread(full, 'delivered_per_s', 0)} / {spread(off, 'delivered_per_s', 0)}",
                     "msg/s"))
    scrape = results.get("scrape")
    if scrape:
        case = f"9. /metrics with {scrape['opened']:,} sockets open"
        rows.append((case, f"server CPU per scrape ({scrape['scrapes']} scrapes, idle cost "
                     "subtracted; target < 50)", fmt(scrape["server_cpu_ms_per_scrape"], 2),
                     "CPU ms"))
        rows.append((case, "the same without subtracting; the idle server's CPU",
                     f"{fmt(scrape['server_cpu_ms_per_scrape_raw'], 2)}; "
                     f"{fmt(scrape['idle_cpu_ms_per_s'], 1)} ms/s", "CPU ms"))
        rows.append((case, "scrape wall time p50 / max; answer size",
                     f"{fmt(scrape['scrape_wall_ms_p50'], 2)} / "
                     f"{fmt(scrape['scrape_wall_ms_max'], 2)}; {scrape['scrape_bytes']:,} B",
                     "ms; bytes"))
        rows.append((case, "chat_open_sockets{kind=\"receive\"} in the scrape",
                     str(scrape["open_sockets_reported"]), "sockets"))
    if full:
        personal_rows("2. throughput FULL", full)
    if idle:
        case = "3. idle sockets"
        rows.append((case, f"server RSS per idle receive socket ({idle['sockets']:,} sockets of "
                     f"{idle['users']:,} users)", fmt(idle["bytes_per_socket"] / 1024, 1),
                     "KiB / socket"))
        rows.append((case, "server RSS before / with the sockets / after closing them",
                     f"{idle['server_rss_before'] / MIB:.1f} / {idle['server_rss_after'] / MIB:.1f}"
                     f" / {idle['server_rss_after_close'] / MIB:.1f}", "MiB"))
        rows.append((case, "the client process holding them: RSS",
                     f"{idle['client_rss_with_sockets'] / MIB:.1f}", "MiB"))
        rows.append((case, "idle sockets that answered fetch_msgs",
                     f"{idle['answered_fetch']:,} of {idle['sockets']:,}", "sockets"))
        rows.append((case, "opening them: handshakes per second; server CPU per handshake",
                     f"{fmt(idle['open_per_s'], 0)}; {fmt(idle['server_cpu_ms_per_open'], 2)}",
                     "1/s; CPU ms"))
    if normal:
        personal_rows("4. throughput NORMAL", normal)
    if full and normal and normal["delivered_per_s"]:
        rows.append(("4. FULL vs NORMAL", "throughput FULL / NORMAL (medians)",
                     fmt(full["delivered_per_s"] / normal["delivered_per_s"], 2), "ratio"))
        if normal["server_cpu_s_per_1000"]:
            rows.append(("4. FULL vs NORMAL", "server CPU per message FULL / NORMAL (medians)",
                         fmt(full["server_cpu_s_per_1000"] / normal["server_cpu_s_per_1000"], 2),
                         "ratio"))
    if grp:
        case = f"5. group of {grp['members']}"
        n = grp["members"] - 1
        rows.append((case, f"server CPU per group message: store, {n} pushes, {n} "
                     f"grp_msg_received, {n} receipt pushes",
                     spread(grp, "server_cpu_ms_per_group_msg", 2), "CPU ms / group msg"))
        rows.append((case, "the same per member reached", fmt(grp["server_cpu_us_per_push"], 1),
                     "CPU µs / member"))
        rows.append((case, f"group messages ({grp['messages']}, window {grp['window']}); "
                     "pushes delivered", f"{fmt(grp['group_msgs_per_s'], 1)}; "
                     f"{fmt(grp['pushes_per_s'], 0)}", "msg/s; pushes/s"))
        rows.append((case, "send -> push p50 / p99; send -> push to the last member p50 / p99",
                     f"{p50_p99(grp['push_ms'])}; {p50_p99(grp['fanout_ms'])}", "ms"))
        rows.extend(load_rows(case, grp["measured"]))
    if fan:
        case = f"5. group of {fan['members']}"
        n = fan["members"] - 1
        rows.append((case, f"server CPU per new_grp_msg alone: store and {n} pushes "
                     "(acknowledged after the measured phase)",
                     spread(fan, "server_cpu_ms_per_group_msg", 2), "CPU ms / group msg"))
        rows.append((case, "the same per push", fmt(fan["server_cpu_us_per_push"], 1),
                     "CPU µs / push"))
        rows.extend(load_rows(case + ", send only", fan["measured"]))
    if dev:
        case = "7. two devices per user, FULL"
        rows.append((case, f"delivered messages (on both devices), {shape}",
                     spread(dev, "delivered_per_s", 0), "msg/s"))
        rows.append((case, "copies on the sender's other device (received, acknowledged) of "
                     "messages sent", f"{fmt(dev['copies'])} of {fmt(dev['sent'])}", "copies"))
        rows.append((case, "send -> push to the later device p50 / p99; send -> copy p50 / p99",
                     f"{p50_p99(dev['push_ms'])}; {p50_p99(dev['copy_ms'])}", "ms"))
        rows.append((case, "send -> first receipt push p50 / p99", p50_p99(dev["receipt_ms"]), "ms"))
        rows.extend(load_rows(case, dev["measured"]))
        rows.append((case, "client CPU per 1000 delivered messages",
                     fmt(dev["client_cpu_s_per_1000"], 3), "CPU s / 1000 msgs"))
        rows.append((case, "server RSS before / after / peak",
                     f"{dev['server_rss_before'] / MIB:.1f} / {dev['server_rss_after'] / MIB:.1f}"
                     f" / {dev['server_rss_peak'] / MIB:.1f}", "MiB"))
    att = results.get("attachments")
    if att:
        rows.extend(attachment_rows(att))
    pu = results.get("push")
    if pu:
        rows.extend(push_rows(pu))
    widths = [max(len(r[i]) for r in rows + [("case", "figure", "value", "unit")]) for i in range(4)]
    line = "  ".join(f"{{:<{w}}}" for w in widths[:2]) + f"  {{:>{widths[2]}}}  {{}}"
    out = [line.format("case", "figure", "value", "unit"),
           line.format(*("-" * w for w in widths[:3]), "-" * widths[3])]
    out += [line.format(*r) for r in rows]

    out += ["", "6. nothing lost (counts over all runs of a case; every one must be 0)"]
    columns = [(f"personal FULL x{len(full['runs'])}" if full else "", full),
               (f"personal NORMAL x{len(normal['runs'])}" if normal else "", normal),
               (f"two devices x{len(dev['runs'])}" if dev else "", dev),
               (f"group x{len(grp['runs'])}" if grp else "", grp),
               (f"group send-only x{len(fan['runs'])}" if fan else "", fan), ("idle", idle),
               ("attachments", att), ("push", pu),
               (f"metrics off x{len(off['runs'])}" if off else "", off),
               ("scrape", scrape)]
    names = [(n, r) for n, r in columns if r]
    head = ["check"] + [n for n, _ in names]
    body = [[c] + [fmt(r["checks"].get(c, 0)) for _, r in names] for c in CHECKS]
    cw = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
    for row in [head] + body:
        out.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                             for i, (v, w) in enumerate(zip(row, cw, strict=True))))
    for n, r in names:
        for text, count in r.get("error_texts", {}).items():
            out.append(f"  {n}: {count} x error frame {text}")
        if r.get("other_frames"):
            out.append(f"  {n}: other frames received (not errors): {r['other_frames']}")
        for line_ in r.get("server_errors_logged", [])[:5]:
            out.append(f"  {n}: server log: {line_}")
        for text in r.get("failures", [])[:10]:
            out.append(f"  {n}: {text}")
    return "\n".join(out)


def push_rows(p: dict[str, Any]) -> list[Row]:
    """Section 9: the Web Push case (bench/webpush.py)."""
    case = "9. Web Push"
    lat = p["commit_push_ms"]
    return [
        (case, f"{p['messages']:,} messages to {p['devices']} offline subscribed devices "
         f"(window {p['window']}): pushed; pushed once with a newer one of their conversation",
         f"{fmt(p['pushed'])} of {fmt(p['sent'])}; {fmt(p['collapsed'])}", "messages"),
        (case, "commit (msg_sent at the sender) -> push request at the local push service "
         "p50 / p99 / max", f"{p50_p99(lat)} / {fmt(lat['max'], 1)}", "ms"),
        (case, "send -> push request p50 / p99", p50_p99(p["send_push_ms"]), "ms"),
        (case, "pushes per second; server CPU per push (store, encryption, VAPID, HTTP)",
         f"{fmt(p['pushes_per_s'], 0)}; {fmt(p['server_cpu_ms_per_push'], 2)}",
         "1/s; CPU ms"),
        *load_rows(case, p["measured"]),
    ]


# The attachment phases whose server RSS growth has a target (issue 14: streamed, not buffered).
RSS_PHASES = (("upload", "the upload of the big file"),
              ("downloads_at_once", "the concurrent downloads of the big file"))


def rss_growth(phase: dict[str, Any], target: int | None) -> str:
    """A phase's RSS growth in MiB, with "OVER" when past `target` bytes."""
    growth = phase["rss"]["growth"]
    text = f"{growth / MIB:.1f}"
    if target is not None and growth >= target:
        text += f" OVER {target / MIB:g}"
    return text


def attachment_rows(a: dict[str, Any]) -> list[Row]:
    """Section 8: the attachments case (bench/attachments.py)."""
    case = "8. attachments"
    size = f"{a['file_bytes'] / MIB:g} MiB"
    target = a["rss_target"]
    rows: list[Row] = []
    if "upload" in a:
        up = a["upload"]
        rows.append((case, f"upload of a {size} file (random bytes, stored as they are)",
                     f"{fmt(up['mib_per_s'], 1)} ({fmt(up['seconds'], 2)} s)", "MiB/s"))
        rows.append((case, "server CPU for that upload", fmt(up["measured"]["server_cpu_s"], 2),
                     "CPU s"))
        rows.extend(load_rows(case + ", upload", up["measured"]))
    if "download" in a:
        rows.append((case, "download of it by the recipient",
                     f"{fmt(a['download']['mib_per_s'], 1)} ({fmt(a['download']['seconds'], 2)} s)",
                     "MiB/s"))
    if "downloads_at_once" in a:
        d = a["downloads_at_once"]
        rows.append((case, f"{a['downloads']} downloads of it at once: together; the first done "
                     "after / all done after", f"{fmt(d['mib_per_s'], 1)}; "
                     f"{fmt(d['first_done_s'], 2)} / {fmt(d['seconds'], 2)}", "MiB/s; s"))
        rows.append((case, f"server CPU for the {a['downloads']} downloads",
                     fmt(d["measured"]["server_cpu_s"], 2), "CPU s"))
    for key, label in (("upload", "the upload"), ("download", "the single download"),
                       ("downloads_at_once", f"the {a['downloads']} downloads at once")):
        if key in a:
            r = a[key]["rss"]
            has_target = key in dict(RSS_PHASES)
            rows.append((case, f"server RSS growth during {label}"
                         + (f" (target < {target / MIB:g} MiB)" if has_target else "")
                         + f"; from {r['baseline'] / MIB:.1f} MiB, {r['samples']} samples",
                         rss_growth(a[key], target if has_target else None), "MiB"))
    if "photo_upload" in a:
        pu = a["photo_upload"]
        w, h = a["photo_pixels"]
        rows.append((case, f"{a['photos']} photos ({w} x {h} JPEG, {a['photo_bytes'] / MIB:.1f} "
                     f"MiB) uploaded {a['photo_concurrency']} at a time",
                     f"{fmt(pu['photos_per_s'], 2)}; {fmt(pu['mib_per_s'], 1)}", "photos/s; MiB/s"))
        rows.append((case, "server CPU per photo (type, Pillow re-encoding without metadata, "
                     "thumbnail, store)", fmt(pu["server_cpu_ms_per_photo"], 0), "CPU ms / photo"))
        rows.extend(load_rows(case + ", photo uploads", pu["measured"]))
        if pu["stored_bytes_mean"] is not None:
            rows.append((case, "a photo as stored (re-encoded), mean",
                         f"{pu['stored_bytes_mean'] / MIB:.2f}", "MiB"))
        rows.append((case, "server RSS growth during the photo uploads (no target: Pillow "
                     "holds decoded images)", rss_growth(pu, None), "MiB"))
    if "photo_download" in a:
        pd = a["photo_download"]
        rows.append((case, f"photos downloaded by the recipient, {a['photo_concurrency']} at a time",
                     f"{fmt(pd['photos_per_s'], 1)}; {fmt(pd['mib_per_s'], 1)}",
                     "photos/s; MiB/s"))
    if "acks" in a:
        ack = a["acks"]
        rows.append((case, f"the recipient acknowledges the {ack['messages']} messages at once "
                     f"({ack['bytes'] / MIB:.0f} MiB of attachments deleted): last receipt after; "
                     "server CPU", f"{fmt(ack['seconds'], 2)}; {fmt(ack['measured']['server_cpu_s'], 2)}",
                     "s; CPU s"))
        rows.extend(load_rows(case + ", deletion", ack["measured"]))
    return rows


def rss_notes(results: dict[str, dict[str, Any]]) -> list[str]:
    """A line per attachment phase whose server RSS grew past its target."""
    a = results.get("attachments")
    if not a:
        return []
    return [f"note: the server's RSS grew by {a[key]['rss']['growth'] / MIB:.1f} MiB during "
            f"{label}: over the target of {a['rss_target'] / MIB:g} MiB (streamed, not buffered)"
            for key, label in RSS_PHASES
            if key in a and a[key]["rss"]["growth"] >= a["rss_target"]]


def machine_info() -> dict[str, Any]:
    """CPUs, load average now, and the versions that matter to the figures."""
    return {"cpus": os.cpu_count(), "loadavg": load_average(), "python": platform.python_version(),
            "aiohttp": aiohttp.__version__, "uvloop": uvloop.__version__,
            "kernel": platform.release()}


def problems(results: dict[str, dict[str, Any]]) -> list[str]:
    """Every count that is not 0, as "case: check = count"."""
    return [f"{n}: {c} = {v}" for n, r in results.items() for c, v in r["checks"].items() if v]


def report(args: argparse.Namespace, info: dict[str, Any], runs: dict[str, list[dict[str, Any]]],
           results: dict[str, dict[str, Any]], failed: list[str]) -> str:
    """The whole report: a header (machine, command, deployment), the table, a note when the
    machine was busy, the cases that could not run, and the verdict."""
    out = ["",
           f"chatserver benchmark ({' '.join(['bench/bench.py', *args.argv])}): "
           f"{info['cpus']} CPUs shared by client and server; load average at start "
           f"{args.load_at_start}, at end {info['loadavg']}; Python {info['python']}, "
           f"aiohttp {info['aiohttp']}, uvloop {info['uvloop']}. Every run on a fresh server and "
           f"database; personal and group figures are medians of {args.repeat} run(s) (min-max)."]
    if args.deployment.engines:
        out.append(f"Scaled mode: {args.deployment.describe()}. Server CPU is the sum over the "
                   "parent and its workers; PostgreSQL and Redis CPU is every `postgres` / "
                   "`redis-server` process on the machine over the measured phase"
                   + ("; `synchronous` is SQLite's and does not apply to PostgreSQL."
                      if args.deployment.database_url else "."))
    out += ["", table(results, args)]
    # a case's measured phase, or each of its phases' (the attachments case has several)
    phases = [m for rs in runs.values() for r in rs
              for m in [r.get("measured")] + [v.get("measured") for v in r.values()
                                              if isinstance(v, dict)] if m]
    others = [m["other_cores"] for m in phases]
    if others and max(others) > 0.15:
        out += ["", f"note: other processes used up to {max(others):.2f} core(s) during a measured "
                "phase: the machine was busy and the figures are pessimistic; re-run on a quiet one"]
    notes = rss_notes(results)
    if notes:
        out += ["", *notes]
    out += [f"could not run: {f}" for f in failed]
    if problems(results):
        out += ["", "FAILED checks: " + "; ".join(problems(results))]
    elif not failed:
        out += ["", "all checks passed"]
    return "\n".join(out)
