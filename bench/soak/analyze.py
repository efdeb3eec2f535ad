#!/usr/bin/env python3
"""Checks a soak run directory (soak.py's OUT): accepted calls against what the emulator received.

Exits 1 when a run was lost, queued twice, received without being queued (outside an uncertain call), received with a
bad signature, or received twice with no crash or slow answer to explain it.
"""
import collections, glob, json, os, re, sys
from datetime import datetime

OUT = sys.argv[1]


def load(name):
    with open(os.path.join(OUT, name)) as f:
        return [json.loads(l) for l in f if l.strip()]


def ts(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


calls = load("calls.jsonl")
records = load("records.jsonl")
events = load("events.jsonl")

by_run = collections.defaultdict(list)
for c in calls:
    by_run[c["run"]].append(c)
outcomes = collections.Counter(c["outcome"] for c in calls)

accepted = {r for r, cs in by_run.items() if any(c["outcome"] == "accepted" for c in cs)}
dup_only = {r for r, cs in by_run.items() if r not in accepted and any(c["outcome"] == "duplicate" for c in cs)}
queued = accepted | dup_only
never = {r for r in by_run if r not in queued}
uncertain = {r for r in never if any(c["outcome"] in ("5xx", "timeout", "conn_error") for c in by_run[r])}
# 202 more than once for one run id: the Ingress queued a run twice.
multi_202 = {r: sum(c["outcome"] == "accepted" for c in cs) for r, cs in by_run.items() if sum(c["outcome"] == "accepted" for c in cs) > 1}

ok = collections.defaultdict(list)
nonok = collections.defaultdict(list)
bad_sig = [x for x in records if not x["sigValid"]]
for x in records:
    x["t"] = ts(x["receivedAt"])
    (ok if 200 <= x["status"] < 300 else nonok)[x["run"]].append(x)

kills = [e for e in events if e["kind"] == "kill"]
dkill9 = [e for e in kills if e["svc"].startswith("dispatcher") and e["sig"] == "KILL"]
dterm = [e for e in kills if e["svc"].startswith("dispatcher") and e["sig"] == "TERM"]
ikill = [e for e in kills if e["svc"] == "ingress"]
ekill = [e for e in kills if e["svc"] == "emulator"]
slow = []
b = None
for e in events:
    if e["kind"] == "emu_slow_begin":
        b = e["t"]
    if e["kind"] == "emu_slow_end" and b:
        slow.append((b, e["t"]))
        b = None

print(f"run dir: {OUT}")
print(f"calls: {len(calls)} over {len(by_run)} run ids; outcomes {dict(outcomes)}")
print(f"runs answered 202: {len(accepted)}; answered only 200 duplicate (first call failed, yet queued): {len(dup_only)}; never accepted: {len(never)} "
      f"(of which with an uncertain 5xx/timeout/reset call: {len(uncertain)})")
print(f"runs answered 202 more than once: {len(multi_202)} {list(multi_202.items())[:5]}")
print(f"emulator records: {len(records)}; 2xx: {sum(len(v) for v in ok.values())}; non-2xx: {sum(len(v) for v in nonok.values())}; bad signature: {len(bad_sig)}")
print(f"kills: dispatcher SIGKILL {len(dkill9)}, dispatcher SIGTERM {len(dterm)}, ingress SIGKILL {len(ikill)}, emulator SIGKILL {len(ekill)}")
print(f"unexpected exits: {[e for e in events if e['kind'] == 'UNEXPECTED_EXIT']}")

dl = {}
try:
    dls = json.load(open(os.path.join(OUT, "deadletters.json")))
    items = dls.get("items", dls if isinstance(dls, list) else [])
    for d in items:
        dl[d.get("runId")] = d
except Exception as e:  # noqa
    print("dead letters unreadable:", e)
print(f"dead letters: {len(dl)}")
for run, d in list(dl.items())[:20]:
    print("   ", run, d.get("deliveryId"), d.get("reason"), d.get("lastStatus"), (d.get("hint") or "")[:160])

lost = sorted(r for r in queued if r not in ok and r not in dl)
print(f"\nLOST (queued, never received 2xx, not a dead letter): {len(lost)}")
for r in lost[:30]:
    print("   ", r, by_run[r], "non-2xx records:", [(x["status"], x["receivedAt"]) for x in nonok.get(r, [])])

print(f"\nreceived but never accepted: {sum(1 for r in ok if r not in queued)}")
for r in [r for r in ok if r not in queued]:
    why = "allowed (uncertain call)" if r in uncertain else "NOT ALLOWED"
    print("   ", r, why, [(c["outcome"], c.get("status")) for c in by_run.get(r, [])])

dups = {r: sorted(v, key=lambda x: x["t"]) for r, v in ok.items() if len(v) > 1}
print(f"\nreceived 2xx more than once: {len(dups)} runs")
classes = collections.Counter()
for r, v in sorted(dups.items(), key=lambda kv: kv[1][0]["t"]):
    t1 = v[0]["t"]
    k9 = [e for e in dkill9 if t1 - 0.2 <= e["t"] <= t1 + 2.5]
    kt = [e for e in dterm if t1 - 0.2 <= e["t"] <= t1 + 25]
    sl = [s for s in slow if s[0] <= t1 <= s[1] + 0.5]
    if k9:
        cls = f"kill-9 of {k9[0]['svc']} {k9[0]['t'] - t1:+.2f}s after 1st receipt"
        classes["kill9"] += 1
    elif sl:
        cls = "slow emulator (timeout)"
        classes["slow"] += 1
    elif kt:
        cls = f"SIGTERM of {kt[0]['svc']} {kt[0]['t'] - t1:+.2f}s after (check 2108)"
        classes["sigterm?"] += 1
    else:
        cls = "UNEXPLAINED"
        classes["unexplained"] += 1
    gaps = [round(x["t"] - t1, 2) for x in v]
    print(f"    {r} x{len(v)} deliveries {sorted(set(x['delivery'] for x in v))} first {v[0]['receivedAt']} gaps {gaps}: {cls}")
print("duplicate classes:", dict(classes))

# records of runs outside this soak
foreign = [x for x in records if x["run"] not in by_run]
print(f"\nrecords of unknown run ids: {len(foreign)}")

# Port run ids received with two different delivery ids (Ingress queued twice)
two_ids = {r: {x['delivery'] for x in v} for r, v in ok.items() if len({x['delivery'] for x in v}) > 1}
print(f"runs delivered under more than one delivery id: {len(two_ids)} {list(two_ids.items())[:5]}")

# latency
lat = []
first_call = {r: min(c["t0"] for c in cs) for r, cs in by_run.items()}
for r, v in ok.items():
    if r in first_call:
        lat.append(min(x["t"] for x in v) - first_call[r])
lat.sort()
if lat:
    print(f"\ncall -> first 2xx receipt: p50 {lat[len(lat)//2]:.3f}s p99 {lat[int(len(lat)*0.99)]:.3f}s max {lat[-1]:.1f}s")

# log scan
print("\nlog lines at Error/Critical (fail:/crit:) or with exceptions, per file:")
pat = re.compile(r"\b(fail|crit|warn):|Unhandled")
counts = collections.Counter()
samples = collections.defaultdict(list)
# Counted from the whole line: .NET writes "Unhandled exception." at column 0, outside the grouping key.
error_lines = 0
for path in sorted(glob.glob(os.path.join(OUT, "logs", "*.log"))):
    with open(path, errors="replace") as f:
        for line in f:
            if line[24:].startswith(("fail:", "crit:")) or "Unhandled exception" in line:
                error_lines += 1
            if pat.search(line):
                key = re.sub(r"\d", "#", line[24:140])
                counts[(os.path.basename(path), key)] += 1
                if len(samples[key]) < 2:
                    samples[key].append(f"{os.path.basename(path)}: {line.rstrip()[:400]}")
by_key = collections.Counter()
for (p, k), n in counts.items():
    by_key[k] += n
for k, n in by_key.most_common(40):
    print(f"  {n:6d}  {k.strip()}")
    for s in samples[k]:
        print("          e.g.", s)

# Port reports: every run delivered (and queued by this soak) must have been reported to Port at least once.
port_path = os.path.join(OUT, "port_calls.jsonl")
unreported = []
if os.path.exists(port_path):
    port_calls = load("port_calls.jsonl")
    taken = [c for c in port_calls if c["run"] and c["method"] == "POST" and 200 <= c["status"] < 300]
    reported = collections.Counter(c["run"] for c in taken)
    # A delivered run's report is a line without a final FAILURE status (a dead letter's has one).
    reported_delivered = {c["run"] for c in taken if not c.get("failure")}
    unreported = sorted(r for r in ok if r in queued and r not in dl and r not in reported_delivered)
    twice = {r: n for r, n in reported.items() if n > 1}
    print(f"\nPort calls: {len(port_calls)}; runs reported: {len(reported)}; delivered but never reported as delivered: {len(unreported)} {unreported[:10]}")
    # Documented: a report whose call reached Port is sent again when its reporter is killed before removing it, or when it
    # is handed back at a stop after its call reached Port.
    print(f"runs reported more than once: {len(twice)} {list(twice.items())[:10]}")
else:
    print("\nPort reporting off in this run")

# Drained, every report has ended, so no delivery record may still name one as pending (GET /api/deliveries/{id}'s
# portReport); the soak trims none.
states_path = os.path.join(OUT, "port_report_states.json")
still_pending = 0
if os.path.exists(states_path):
    with open(states_path) as f:
        report_states = json.load(f)
    still_pending = report_states["pending"]
    print(f"delivery records: {report_states['records']}; their portReport: {report_states['states']}; "
          f"still naming a pending report: {still_pending} {report_states['pendingSample']}")

not_allowed = [r for r in ok if r not in queued and r not in uncertain]
failures = {
    "lost": len(lost),
    "received but not queued": len(not_allowed),
    "queued twice (202 twice)": len(multi_202),
    "delivered under two delivery ids": len(two_ids),
    "bad signatures": len(bad_sig),
    "unexplained duplicates": classes["unexplained"],
    # A stop waits for POSTs under way (grace 20 s, timeout 5 s here): a duplicate after one is a bug unless 2108 says so.
    "duplicates after a SIGTERM": classes["sigterm?"],
    "delivered but never reported to Port": len(unreported),
    "records still naming a pending Port report": still_pending,
    "processes that exited on their own": sum(1 for e in events if e["kind"] == "UNEXPECTED_EXIT"),
    "not drained": sum(1 for e in events if e["kind"] == "drain" and not e["quiet"]),
    # Every dead letter logs Error 2003: a soak expects none (the emulator's failing spells are shorter than the retries).
    "Error or Critical log lines": error_lines,
    # A stop (SIGTERM) must end with exit code 0; a kill -9 ends with -9.
    "stops that did not exit cleanly": sum(1 for e in events if e["kind"] == "exited" and e.get("rc") not in (0, -9)),
}
bad = {k: v for k, v in failures.items() if v}
print("\nVERDICT:", "FAIL " + str(bad) if bad else "OK: no run lost, none queued twice, every duplicate explained by a crash or a timeout")
sys.exit(1 if bad else 0)
