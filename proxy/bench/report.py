#!/usr/bin/env python3
"""Turns proxy/bench/run.sh's results.tsv into the markdown report of `make bench`.

Usage: report.py OUT_DIR   (reads OUT_DIR/results.tsv, meta.txt, notes.txt, loadavg.txt)

Every cell is the median over rounds with the min–max range. Ratios are computed per round
(both figures come from the same round, so drift between rounds cancels) and the median of those
per-round ratios is shown.
"""

import collections
import statistics
import sys
from pathlib import Path

out = Path(sys.argv[1])
rows = collections.defaultdict(dict)  # (workload, target, metric) -> {round: value}
for line in (out / "results.tsv").read_text().splitlines():
    parts = line.split("\t")
    if len(parts) != 5 or parts[4] == "":
        continue
    rnd, workload, target, metric, value = parts
    try:
        rows[(workload, target, metric)][int(rnd)] = float(value)
    except ValueError:
        pass
meta = dict(
    l.split("=", 1) for l in (out / "meta.txt").read_text().splitlines() if "=" in l
)
notes = (out / "notes.txt").read_text().strip() if (out / "notes.txt").exists() else ""
loadavg = (out / "loadavg.txt").read_text().strip() if (out / "loadavg.txt").exists() else ""

PEERS = [p for p in ("nginx", "haproxy") if any(k[1] == p for k in rows)]
OURS = [t for t in ("tether", "tether-http1", "tether-h2", "baseline", "tether-tcp") if t == "tether" or any(k[1] == t for k in rows)]
PROXIES = OURS + PEERS
TARGETS = ["direct"] + PROXIES


def values(w, t, m):
    return rows.get((w, t, m), {})


def fmt(x, digits=None):
    if x is None:
        return "—"
    if digits is None:
        digits = 0 if abs(x) >= 100 else (1 if abs(x) >= 10 else 2)
    return f"{x:,.{digits}f}"


def cell(w, t, m, scale=1.0, digits=None):
    v = values(w, t, m)
    if not v:
        return "—"
    xs = [x * scale for x in v.values()]
    med = statistics.median(xs)
    if len(xs) == 1:
        return fmt(med, digits)
    return f"{fmt(med, digits)} ({fmt(min(xs), digits)}–{fmt(max(xs), digits)})"


def per_round_ratio(w, a, m_a, b, m_b=None):
    """Median over rounds of value(a)/value(b)."""
    va, vb = values(w, a, m_a), values(w, b, m_b or m_a)
    rs = [va[r] / vb[r] for r in va if r in vb and vb[r]]
    return statistics.median(rs) if rs else None


def best_peer(w, m, higher_better=True):
    """Per round, the best peer's value; returns {round: value} and the peer most often best."""
    best, who = {}, collections.Counter()
    for p in PEERS:
        for r, x in values(w, p, m).items():
            if r not in best or (x > best[r] if higher_better else x < best[r]):
                best[r] = x
    for r, x in best.items():
        for p in PEERS:
            if values(w, p, m).get(r) == x:
                who[p] += 1
    return best, (who.most_common(1)[0][0] if who else None)


def ratio_to_best(w, t, m, higher_better=True):
    best, _ = best_peer(w, m, higher_better)
    v = values(w, t, m)
    rs = [v[r] / best[r] for r in v if r in best and best[r]]
    return statistics.median(rs) if rs else None


def ratio_to_direct(w, t, m):
    return per_round_ratio(w, t, m, "direct")


def x(r):
    return "—" if r is None else f"{r:.2f}×"


lines = []
say = lines.append
say("# `make bench` report")
say("")
say(
    f"{meta.get('rounds')} interleaved rounds of {meta.get('duration')} s runs on {meta.get('cores')} "
    f"cores; upstream {meta.get('upstream')}; load generator wrk ({meta.get('wrk_threads')} thread) "
    "and `proxy/examples/handshake_load` (1 thread, 16 concurrent). Each proxy runs 1 worker/thread. "
    "Cells: median (min–max) over rounds. **The machine is shared: absolute figures are noisy; "
    "compare the ratios, computed per round.**"
)
say("")
say(f"Versions: {meta.get('versions', '')}")
say("")

MIB = 1 / 1024


def rss_cell(w, t):
    o, i = values(w, t, "rss_out_kib"), values(w, t, "rss_in_kib")
    if not o and not i:
        return "—"
    fo = lambda d: fmt(statistics.median(d.values()) * MIB, 1) if d else "—"  # noqa: E731
    rng = ""
    if len(o) > 1:
        rng = f" ({fmt(min(o.values()) * MIB, 1)}–{fmt(max(o.values()) * MIB, 1)} / " \
              f"{fmt(min(i.values()) * MIB, 1)}–{fmt(max(i.values()) * MIB, 1)})"
    return f"{fo(o)} / {fo(i)}{rng}"


def cpu_cell(w, t, kind="cpu"):
    """Outbound + inbound µs per request: all CPU (kind "cpu") or its system time ("sys")."""
    o, i = values(w, t, f"{kind}_out_us"), values(w, t, f"{kind}_in_us")
    if not o:
        return "—"
    return f"{fmt(statistics.median(o.values()), 0)} + {fmt(statistics.median(i.values()), 0)}"


hold = meta.get("hold_conns", "1000")
table = [
    ("keep-alive, 32 connections, req/s", lambda t: cell("ka32", t, "rps", 1e-3, 1) + (" k" if values("ka32", t, "rps") else "")),
    ("proxy CPU per request at 32 connections, µs (outbound + inbound)", lambda t: cpu_cell("ka32", t) if t != "direct" else "—"),
    ("… of which system time (the kernel), µs", lambda t: cpu_cell("ka32", t, "sys") if t != "direct" else "—"),
    ("keep-alive, 1 connection, req/s", lambda t: cell("ka1", t, "rps", 1e-3, 2) + (" k" if values("ka1", t, "rps") else "")),
    ("keep-alive, 1 connection, p50 latency, ms", lambda t: cell("ka1", t, "p50_ms", 1, 3)),
    ("keep-alive, 1 connection, p99 latency, ms", lambda t: cell("ka1", t, "p99_ms", 1, 3)),
    ("proxy CPU per request at 1 connection, µs (outbound + inbound)", lambda t: cpu_cell("ka1", t) if t != "direct" else "—"),
    ("… of which system time (the kernel), µs", lambda t: cpu_cell("ka1", t, "sys") if t != "direct" else "—"),
    ("new mTLS connection per request through the pair, req/s (direct: new plain TCP connection)", lambda t: cell("newconn_pair", t, "rps", 1, 0) if t not in OURS else "n/a ¹"),
    ("new mTLS connection + 1 request straight at the inbound, conn/s", lambda t: cell("newconn_inbound", t, "rps", 1, 0)),
    ("inbound CPU per new mTLS connection + request, µs", lambda t: cell("newconn_inbound", t, "cpu_in_us", 1, 0)),
    ("full mTLS handshakes/s straight at the inbound", lambda t: cell("handshake_inbound", t, "rps", 1, 0)),
    ("inbound CPU per full mTLS handshake, µs", lambda t: cell("handshake_inbound", t, "cpu_in_us", 1, 0)),
    ("RSS idle, MiB (outbound / inbound)", lambda t: rss_cell("idle", t)),
    ("RSS at the end of the 32-connection run, MiB (outbound / inbound)", lambda t: rss_cell("ka32", t)),
    (f"RSS holding {hold} connections, MiB (outbound: HTTP keep-alive clients / inbound: mTLS)", lambda t: rss_cell("hold", t)),
    (f"RSS with {meta.get('burst_conns', '4000')} busy connections through the pair, MiB (outbound / inbound)", lambda t: rss_cell("burst", t)),
    ("RSS 5 s after those connections closed, MiB (outbound / inbound)", lambda t: rss_cell("burst_after5", t)),
]
NAMES = {"direct": "direct", "tether": "Tether pair (default, `auto`)",
         "tether-http1": "Tether, `http1` ²", "tether-h2": "Tether, `h2` ²",
         "baseline": "baseline build (`BASELINE`)", "tether-tcp": "Tether, TCP mode ³"}
say("| workload | " + " | ".join(NAMES.get(t, f"{t} pair") for t in TARGETS) + " |")
say("|---|" + "---|" * len(TARGETS))
for name, f in table:
    say(f"| {name} | " + " | ".join(f(t) for t in TARGETS) + " |")
say("")
say(
    "¹ The Tether outbound always reuses connections to its peers (an HTTP/1.1 connection held per "
    "client connection and pooled when the client closes, or one shared HTTP/2 connection); there "
    "is no setting to open a new one per request. Its new-connection cost is measured straight at "
    "the inbound instead (the next rows, same client for all three inbounds: a new TCP + full TLS "
    "1.3 handshake with a client certificate, verified with Tether's SVID verifier, then `GET /`)."
)
if len(OURS) > 1:
    say("")
    say(
        "² The same pair with `peer_protocol` forced on the outbound: `http1`, an HTTP/1.1 "
        "connection held per client connection; `h2`, one HTTP/2 connection shared by every "
        "request. The default, `auto`, is `http1` while at most 16 client connections are open and "
        "`h2` beyond. All three outbounds share one inbound process, so the idle RSS and "
        "handshake rows are the default pair's."
    )
if "tether-tcp" in OURS:
    say("")
    say(
        "³ The same two sidecars in TCP mode (a `mode = \"tcp\"` service and inbound): mTLS and "
        "byte copying with no HTTP at all, one mTLS connection per client connection, measured at "
        "32 and 1 connections only. It is not how an HTTP service should be meshed (no policy on "
        "method or path, no HTTP metrics or access log); it is the floor that any HTTP path on the "
        "same stack (tokio, rustls, this kernel) stands on, and so the most a leaner HTTP path could "
        "gain."
    )
say("")

# Ratios.
say("## Ratios (median of per-round ratios)")
say("")
ratio_rows = [
    ("keep-alive 32 conns, req/s", "ka32", "rps", True),
    ("keep-alive 1 conn, req/s", "ka1", "rps", True),
    ("keep-alive 1 conn, p50 latency (lower is better)", "ka1", "p50_ms", False),
    ("keep-alive 1 conn, p99 latency (lower is better)", "ka1", "p99_ms", False),
    ("new connection per request through the pair, req/s", "newconn_pair", "rps", True),
    ("new mTLS connection + request at the inbound, conn/s", "newconn_inbound", "rps", True),
    ("inbound CPU per new connection + request (lower is better)", "newconn_inbound", "cpu_in_us", False),
    ("full handshakes/s at the inbound", "handshake_inbound", "rps", True),
    ("inbound CPU per full handshake (lower is better)", "handshake_inbound", "cpu_in_us", False),
]
hdr = "| workload | " + " | ".join(f"{p} ÷ best peer" for p in PROXIES) + " | " + " | ".join(f"{p} ÷ direct" for p in PROXIES) + " |"
say(hdr)
say("|---|" + "---|" * (2 * len(PROXIES)))
for name, w, m, hb in ratio_rows:
    r_best = [x(ratio_to_best(w, p, m, hb)) for p in PROXIES]
    r_dir = [x(ratio_to_direct(w, p, m)) if values(w, "direct", m) else "—" for p in PROXIES]
    say(f"| {name} | " + " | ".join(r_best) + " | " + " | ".join(r_dir) + " |")
say("")

# Targets. Each ratio is against the best peer, computed per round and the median taken.
say("## Targets (issue 15, performance)")
say("")


def verdict(ok):
    return "not measured" if ok is None else ("**met**" if ok else "**missed**")


def target_line(text, ok, figure):
    say(f"- {text}: {verdict(ok)} — {figure}")


def best_name(w, m, hb=True):
    return best_peer(w, m, hb)[1] or "no peer"


def pair_sum(w, t, a, b):
    """{round: value of metric a + metric b} for target t (outbound + inbound)."""
    va, vb = values(w, t, a), values(w, t, b)
    return {r: va[r] + vb[r] for r in va if r in vb}


def pair_ratio_to_best(w, a, b, higher_better=False, t="tether"):
    """Median over rounds of target t's (a + b) ÷ the best peer's (a + b) in that round."""
    ours = pair_sum(w, t, a, b)
    rs = []
    for r, v in ours.items():
        peers = [pair_sum(w, p, a, b).get(r) for p in PEERS]
        peers = [x for x in peers if x]
        if peers:
            rs.append(v / (max(peers) if higher_better else min(peers)))
    return statistics.median(rs) if rs else None


def both(*xs):
    return None if any(v is None for v in xs) else all(xs)


def mib(w, t, m):
    v = values(w, t, m)
    return max(v.values()) * MIB if v else None


r = ratio_to_best("ka32", "tether", "rps")
rc = pair_ratio_to_best("ka32", "cpu_out_us", "cpu_in_us")
target_line("keep-alive 32 connections ≥ 1.3× req/s and ≤ 0.6× the pair CPU per request",
            both(None if r is None else r >= 1.3, None if rc is None else rc <= 0.6),
            f"{x(r)} {best_name('ka32', 'rps')} req/s; pair CPU per request {x(rc)} the cheapest peer pair's")
r1 = ratio_to_best("ka1", "tether", "rps")
p99 = ratio_to_best("ka1", "tether", "p99_ms", False)
target_line("keep-alive 1 connection ≥ 1.2× req/s and p99 ≤ 0.9×",
            both(None if r1 is None else r1 >= 1.2, None if p99 is None else p99 <= 0.9),
            f"{x(r1)} {best_name('ka1', 'rps')} req/s; p99 {x(p99)} the best peer's ({best_name('ka1', 'p99_ms', False)})")
rf1 = ratio_to_best("ka1", "tether-tcp", "rps")
if rf1 is not None:
    rf32 = pair_ratio_to_best("ka32", "cpu_out_us", "cpu_in_us", t="tether-tcp")
    say(f"- the floor (³): Tether in TCP mode, no HTTP, at 1 connection {x(rf1)} "
        f"{best_name('ka1', 'rps')} req/s and {x(per_round_ratio('ka1', 'tether-tcp', 'rps', 'tether'))} "
        f"the HTTP pair's; at 32 connections pair CPU per request {x(rf32)} the cheapest peer pair's")
rhc = ratio_to_best("handshake_inbound", "tether", "cpu_in_us", False)
rh = ratio_to_best("handshake_inbound", "tether", "rps")
target_line("full mTLS handshake at the inbound ≤ 0.25× the CPU", None if rhc is None else rhc <= 0.25,
            f"{x(rhc)} the best peer's CPU per handshake ({best_name('handshake_inbound', 'cpu_in_us', False)}); "
            f"{x(rh)} its handshakes/s")
ro = mib("ka32", "tether", "rss_out_kib")
target_line("outbound RSS after the load ≤ 12 MiB (sampled at the end of the 32-connection run, connections still open)",
            None if ro is None else ro <= 12, f"{fmt(ro, 1)} MiB (largest over rounds)")
burst_conns = meta.get("burst_conns", "4000")
bb = pair_sum("burst", "tether", "rss_out_kib", "rss_in_kib")
rb = pair_ratio_to_best("burst", "rss_out_kib", "rss_in_kib")
idle_pair = pair_sum("idle", "tether", "rss_out_kib", "rss_in_kib").get(0)
after = {k: pair_sum(w, "tether", "rss_out_kib", "rss_in_kib").get(0) for k, w in (("1 s", "burst_after1"), ("5 s", "burst_after5"))}
back = None if idle_pair is None or after["5 s"] is None else after["5 s"] / idle_pair
target_line(f"{burst_conns} busy connections through the pair ≤ 0.5× the memory, and RSS back within 1.5× of idle after they close",
            both(None if rb is None else rb <= 0.5, None if back is None else back <= 1.5),
            f"busy: {fmt(bb[0] * MIB if bb else None, 1)} MiB, {x(rb)} the leanest peer pair's; "
            f"idle {fmt(idle_pair * MIB if idle_pair else None, 1)} MiB, 1 s after the close "
            f"{fmt(after['1 s'] * MIB if after['1 s'] else None, 1)} MiB, 5 s after {fmt(after['5 s'] * MIB if after['5 s'] else None, 1)} MiB "
            f"({x(back)} idle); peers 5 s after: " + ", ".join(
                f"{p} {fmt(pair_sum('burst_after5', p, 'rss_out_kib', 'rss_in_kib').get(0, 0) * MIB, 1)} MiB" for p in PEERS))
rl = per_round_ratio("ka32_log", "tether-log", "rps", "tether")
target_line("access log on at both sidecars costs ≤ 10 % at 32 connections (ka32_log)",
            None if rl is None else rl >= 0.9,
            f"{x(rl)} the req/s of the same pair with it off "
            f"({cell('ka32_log', 'tether-log', 'rps')} vs {cell('ka32_log', 'tether', 'rps')} req/s; "
            f"CPU/request out+in {cell('ka32_log', 'tether-log', 'cpu_out_us')} + {cell('ka32_log', 'tether-log', 'cpu_in_us')} µs "
            f"vs {cell('ka32_log', 'tether', 'cpu_out_us')} + {cell('ka32_log', 'tether', 'cpu_in_us')} µs)")
if any(k[1] == "baseline" for k in rows):
    for w, name in (("ka32", "keep-alive 32 connections"), ("ka1", "keep-alive 1 connection")):
        rb = per_round_ratio(w, "tether", "rps", "baseline")
        cpu = [per_round_ratio(w, "tether", m, "baseline") for m in ("cpu_out_us", "cpu_in_us")]
        say(f"- {name}, this build ÷ the baseline build (BASELINE, same run): {x(rb)} req/s; "
            f"CPU per request {x(cpu[0])} outbound, {x(cpu[1])} inbound")
say("")
say("Earlier targets (issue \"make bench\"), still checked:")
say("")
rn = ratio_to_best("newconn_inbound", "tether", "rps")
rnc = ratio_to_best("newconn_inbound", "tether", "cpu_in_us", False)
target_line("new connection per request ≥ 2× the best peer (measured at the inbound, see ¹)",
            None if rn is None else rn >= 2.0,
            f"{x(rn)} {best_name('newconn_inbound', 'rps')} conn/s; inbound CPU per connection {x(rnc)} of the best peer's")
idle = [mib("idle", "tether", "rss_out_kib"), mib("idle", "tether", "rss_in_kib")]
ok = None if None in idle else max(idle) <= 10
target_line("RSS ≤ 10 MiB idle", ok, f"outbound {fmt(idle[0], 1)} MiB, inbound {fmt(idle[1], 1)} MiB")
held = [mib("hold", "tether", "rss_out_kib"), mib("hold", "tether", "rss_in_kib")]
known = [h for h in held if h is not None]
target_line(f"RSS ≤ 64 MiB holding {hold} connections", (max(known) <= 64) if known else None,
            f"outbound {fmt(held[0], 1)} MiB, inbound {fmt(held[1], 1)} MiB")
ca = values("ca_keepalive", "tether-ca", "rps")
if ca:
    med = statistics.median(ca.values())
    target_line(f"CA issuance ≥ 2,000 certificates/s over HTTPS ({meta.get('cores')} cores)", med >= 2000,
                f"{fmt(med, 0)}/s ({fmt(min(ca.values()), 0)}–{fmt(max(ca.values()), 0)}) with 32 kept-alive "
                f"connections, server CPU {cell('ca_keepalive', 'tether-ca', 'cpu_us', 1, 0)} µs/cert; "
                f"{cell('ca_newconn', 'tether-ca', 'rps', 1, 0)}/s with a new TLS connection per enrollment "
                f"(server CPU {cell('ca_newconn', 'tether-ca', 'cpu_us', 1, 0)} µs/cert)")
say("- policy ≤ 2 µs at 10,000 rules, revocation lookup ≤ 200 ns: micro-benchmarks, "
    "`cargo bench -p tether-proxy --bench policy` and `cargo bench -p tether-certs --bench certs`; "
    "the request path's hot functions: `cargo bench -p tether-proxy --bench request_path`.")
say("")
if notes:
    say("## Notes")
    say("")
    say(notes)
    say("")
if loadavg:
    say("Load average during the run (other work on the machine shows here):")
    say("")
    say("```")
    say(loadavg)
    say("```")
print("\n".join(lines))
