#!/usr/bin/env python3
"""Randomized crash soak of PortAzure with real processes (docs/soak.md).

Builds the Ingress, the Dispatcher and the emulator (Release), starts redis-server (AOF, appendfsync always), the
emulator, one Ingress and 3 Dispatchers, sends signed Port runs at a steady rate, kills / restarts services at random,
collects what the emulator received, drains, and writes everything to OUT; analyze.py OUT checks it.
"""
import base64, collections, hashlib, hmac, http.client, json, os, queue, random, signal, socket, subprocess, sys, threading, time
from datetime import datetime, timezone

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SEND_SECONDS = float(os.environ.get("SOAK_SEND_SECONDS", "1320"))
RATE = float(os.environ.get("SOAK_RATE", "80"))
WORKERS = 12
SEED = int(os.environ.get("SOAK_SEED", str(int(time.time()))))
OUT = os.environ.get("SOAK_OUT", f"{ROOT}/bench/results/soak-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}")
SECRET = "soak-port-client-secret"
ADMIN = "soak-admin-key-0123456789"
ORG, WEBHOOK = "contoso", "deploy"
RUN_TAG = f"{random.Random().randrange(16**6):06x}"
BASE_DELAY_MS = int(os.environ.get("SOAK_EMU_DELAY_MS", "0"))
# Reporting to Port (the emulator's Port API) on: every delivered run must be reported.
PORT = os.environ.get("SOAK_PORT", "1") == "1"

rng = random.Random(SEED)
os.makedirs(f"{OUT}/logs", exist_ok=True)
lock = threading.Lock()
stop_sending = threading.Event()
stop_chaos = threading.Event()
stop_all = threading.Event()


def now():
    return time.time()


def iso(t):
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


events_f = open(f"{OUT}/events.jsonl", "a", buffering=1)


def event(kind, **kw):
    t = now()
    rec = {"t": t, "at": iso(t), "kind": kind, **kw}
    with lock:
        events_f.write(json.dumps(rec) + "\n")
    print(f"{iso(t)} {kind} {kw}", flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def dll(project):
    return f"{ROOT}/{project}/bin/Release/net10.0/{project}.dll"


LOG_ENV = {
    "Logging__Console__FormatterName": "simple",
    "Logging__Console__FormatterOptions__SingleLine": "true",
    "Logging__Console__FormatterOptions__TimestampFormat": "yyyy-MM-ddTHH:mm:ss.fff ",
    "Logging__Console__FormatterOptions__UseUtcTimestamp": "true",
    "DOTNET_CLI_TELEMETRY_OPTOUT": "1",
}


class Svc:
    """One service slot; each start is a new incarnation with its own log file."""

    def __init__(self, name, kind, port, env_fn, cmd_fn):
        self.name, self.kind, self.port, self.env_fn, self.cmd_fn = name, kind, port, env_fn, cmd_fn
        self.proc = None
        self.inc = 0
        self.expected_down = False
        self.busy = threading.Lock()
        self.consumer = None  # configured consumer name of the current incarnation (dispatchers)

    def start(self, **kw):
        self.inc += 1
        env = dict(os.environ)
        env.update(self.env_fn(self, **kw))
        cmd, cwd = self.cmd_fn(self)
        logf = open(f"{OUT}/logs/{self.name}-{self.inc:02d}.log", "ab")
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        self.expected_down = False
        event("start", svc=self.name, inc=self.inc, pid=self.proc.pid, consumer=self.consumer)

    def wait_ready(self, path="/alive", timeout=60):
        deadline = now() + timeout
        while now() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode} while starting")
            try:
                if path is None:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", path)
                c.getresponse().read()
                c.close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready")

    def signal(self, sig):
        self.expected_down = True
        pid = self.proc.pid
        # Through Popen: a child the monitor has already reaped is not signalled (its pid may be another process's by now).
        self.proc.send_signal(sig)
        return pid


# ------------------------------------------------------------------ services
redis_port = free_port()
emu_port = free_port()
ing_port = free_port()
disp_ports = [free_port() for _ in range(3)]
os.makedirs(f"{OUT}/redis", exist_ok=True)
REDIS_CONN = f"127.0.0.1:{redis_port},abortConnect=false"

redis = Svc("redis", "redis", redis_port, lambda s: {},
            lambda s: (["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
                        "--appendfsync", "always", "--dir", f"{OUT}/redis"], f"{OUT}/redis"))


def emu_env(s):
    return {**LOG_ENV, "ASPNETCORE_URLS": f"http://127.0.0.1:{emu_port}", "Emulator__Secret": SECRET,
            "Emulator__MaxRecorded": "0", "Logging__LogLevel__Default": "Warning"}


emulator = Svc("emulator", "emulator", emu_port, emu_env,
               lambda s: (["dotnet", dll("PortAzure.AzureDevOpsEmulator")], os.path.dirname(dll("PortAzure.AzureDevOpsEmulator"))))


def ing_env(s):
    return {**LOG_ENV, "ASPNETCORE_URLS": f"http://127.0.0.1:{ing_port}", "ConnectionStrings__redis": REDIS_CONN,
            "Port__ClientSecret": SECRET, "Admin__ApiKey": ADMIN, "Ingress__RateLimit__Enabled": "false",
            "AzureDevOps__Targets__0__Org": ORG, "AzureDevOps__Targets__0__Webhook": WEBHOOK,
            "services__dispatcher__http__0": f"http://127.0.0.1:{disp_ports[0]}",
            "Logging__LogLevel__PortAzure": "Debug"}


ingress = Svc("ingress", "ingress", ing_port, ing_env,
              lambda s: (["dotnet", dll("PortAzure.Ingress")], os.path.dirname(dll("PortAzure.Ingress"))))

DISPATCHER_SETTINGS = {
    "Dispatcher__RequestTimeoutSeconds": "5",
    "Dispatcher__ClaimMarginSeconds": "5",
    "Dispatcher__FinishRetrySeconds": "15",
    "Dispatcher__ClaimIntervalSeconds": "2",
    "Dispatcher__Retry__MaxDelaySeconds": "20",
    "Dispatcher__TargetHealth__ProbeIntervalSeconds": "5",
    # A killed reporter's reports are taken over after this (15 min by default); Port answers at once here, so no live
    # reporter goes this long between two touches of a report.
    "Dispatcher__PortReportReclaimSeconds": "30",
}


def disp_env(s, consumer=None):
    e = {**LOG_ENV, **DISPATCHER_SETTINGS, "ASPNETCORE_URLS": f"http://127.0.0.1:{s.port}", "ConnectionStrings__redis": REDIS_CONN,
         "Port__ClientSecret": SECRET, "Admin__ApiKey": ADMIN, "AzureDevOps__BaseUrl": f"http://127.0.0.1:{emu_port}/",
         "AzureDevOps__Targets__0__Org": ORG, "AzureDevOps__Targets__0__Webhook": WEBHOOK,
         "Logging__LogLevel__PortAzure": "Debug"}
    if consumer:
        e["Dispatcher__ConsumerName"] = consumer
    if PORT:
        e["Port__ClientId"] = "soak-client"
        e["Port__ApiBaseUrl"] = f"http://127.0.0.1:{emu_port}/"
    return e


dispatchers = [Svc(f"dispatcher{i + 1}", "dispatcher", disp_ports[i], disp_env,
                   lambda s: (["dotnet", dll("PortAzure.Dispatcher")], os.path.dirname(dll("PortAzure.Dispatcher"))))
               for i in range(3)]
consumer_counter = [0]


def start_dispatcher(d, mode=None):
    if mode is None:
        mode = rng.choices(["same", "newname", "auto"], [40, 30, 30])[0]
    if mode == "same" and d.consumer:
        pass
    elif mode in ("same", "newname"):
        consumer_counter[0] += 1
        d.consumer = f"soak-{d.name}-c{consumer_counter[0]}"
        mode = "newname"
    else:
        d.consumer = None
    d.start(consumer=d.consumer)
    return mode


def redis_cli(*args):
    return subprocess.run(["redis-cli", "-p", str(redis_port), *args], capture_output=True, text=True).stdout.strip()


# ------------------------------------------------------------------ sender
runs_f = open(f"{OUT}/calls.jsonl", "a", buffering=1)
work = queue.Queue()
sent_counter = [0]
outcome_counts = {}


def make_call(run_id):
    body = json.dumps({"action": "deploy_service", "resourceType": "run", "status": "TRIGGERED",
                       "trigger": {"by": {"orgId": "org_demo", "userId": "user_demo"}, "origin": "UI", "at": iso(now())},
                       "context": {"entity": "checkout", "blueprint": "service", "runId": run_id},
                       "payload": {"entity": None, "action": {"identifier": "deploy_service", "invocationMethod": {"type": "WEBHOOK"}},
                                   "properties": {"environment": "staging", "version": "2.4.1"}, "censoredProperties": []}},
                      separators=(",", ":")).encode()
    ts = str(int(now()))
    sig = base64.b64encode(hmac.new(SECRET.encode(), ts.encode() + b"." + body, hashlib.sha256).digest()).decode()
    headers = {"Content-Type": "application/json", "X-Port-Timestamp": ts, "X-Port-Signature": "v1," + sig}
    return body, headers


def worker():
    conn = None
    while True:
        item = work.get()
        if item is None:
            return
        run_id, attempt, due = item
        wait = due - now()
        if wait > 0:
            time.sleep(wait)
        body, headers = make_call(run_id)
        t0 = now()
        status, outcome, detail = None, None, ""
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", ing_port, timeout=10)
            conn.request("POST", f"/{ORG}/_apis/public/distributedtask/webhooks/{WEBHOOK}?api-version=6.0-preview", body, headers)
            resp = conn.getresponse()
            text = resp.read().decode(errors="replace")
            status = resp.status
            if status == 202:
                outcome = "accepted"
            elif status == 200 and '"duplicate":true' in text.replace(" ", ""):
                outcome = "duplicate"
            elif status >= 500:
                outcome = "5xx"
                detail = text[:300]
            else:
                outcome = "rejected"
                detail = text[:300]
        except ConnectionRefusedError as e:
            outcome, detail = "refused", repr(e)
            conn = None
        except (socket.timeout, TimeoutError) as e:
            outcome, detail = "timeout", repr(e)
            conn = None
        except (OSError, http.client.HTTPException) as e:
            outcome, detail = "conn_error", repr(e)
            try:
                conn.close()
            except Exception:
                pass
            conn = None
        t1 = now()
        rec = {"run": run_id, "attempt": attempt, "t0": t0, "t1": t1, "status": status, "outcome": outcome}
        if detail:
            rec["detail"] = detail
        with lock:
            runs_f.write(json.dumps(rec) + "\n")
            outcome_counts[outcome] = outcome_counts.get(outcome, 0) + 1
        # Retry half of the runs whose call failed (not refused by a 4xx), up to 5 tries, as Port might.
        if outcome in ("5xx", "refused", "timeout", "conn_error") and attempt < 5:
            if attempt > 1 or rng.random() < 0.5:
                work.put((run_id, attempt + 1, now() + rng.uniform(1, 3)))


def producer():
    i = 0
    start = now()
    while not stop_sending.is_set():
        due = start + i / RATE
        if due > start + SEND_SECONDS:
            break
        d = due - now()
        if d > 0:
            time.sleep(d)
        work.put((f"soak_{RUN_TAG}_{i:07d}", 1, due))
        i += 1
        sent_counter[0] = i
    stop_sending.set()
    event("sending_stopped", runs=i)


# ------------------------------------------------------------------ emulator records
records_f = open(f"{OUT}/records.jsonl", "a", buffering=1)
record_counts = [0]


# Only with reporting on: analyze.py takes the file's presence as "reporting was on".
port_calls_f = open(f"{OUT}/port_calls.jsonl", "a", buffering=1) if PORT else None
port_call_counts = [0]


def take(path):
    """What the emulator recorded at `path`, removed in the same step; None when it did not answer (restarting)."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", emu_port, timeout=60)
        c.request("POST", path)
        r = c.getresponse()
        data = r.read()
        c.close()
        if r.status != 200:
            return None
    except OSError:
        return None
    return json.loads(data)


def take_port_calls():
    if not PORT:
        return 0
    items = take("/_emulator/port/calls/take")
    if items is None:
        return None
    with lock:
        for it in items:
            rec = {"seq": it["sequence"], "receivedAt": it["receivedAt"], "method": it["method"], "run": it.get("runId"),
                   "failure": '"terminationStatus":"FAILURE"' in (it.get("bodyText") or ""),
                   "status": it["statusCode"], "emuInc": emulator.inc}
            port_calls_f.write(json.dumps(rec) + "\n")
        port_call_counts[0] += len(items)
    return len(items)


def take_records():
    take_port_calls()
    items = take("/_emulator/requests/take")
    if items is None:
        return None
    with lock:
        for it in items:
            h = {k.lower(): v for k, v in it["headers"].items()}
            rec = {"seq": it["sequence"], "receivedAt": it["receivedAt"], "status": it["statusCode"], "sigValid": it["signatureValid"],
                   "outcome": it["outcome"], "run": (h.get("x-port-run-id") or [None])[0], "delivery": (h.get("idempotency-key") or [None])[0],
                   "emuInc": emulator.inc, "method": it["method"]}
            records_f.write(json.dumps(rec) + "\n")
        record_counts[0] += len(items)
    return len(items)


def take_port_report_states():
    """Where each delivery's Port report stands on its record (GET /api/deliveries/{id}'s portReport), once drained."""
    keys = subprocess.run(["redis-cli", "-p", str(redis_port), "--scan", "--pattern", "{portazure}:delivery:*"],
                          capture_output=True, text=True).stdout.split()
    # One redis-cli for all of them: a reply per line (nil as an empty line), two per record.
    commands = "".join(f'HMGET "{k}" portReportEntry portReport\n' for k in keys)
    lines = subprocess.run(["redis-cli", "-p", str(redis_port)], input=commands, capture_output=True, text=True).stdout.split("\n")
    states, pending = collections.Counter(), []
    for i, key in enumerate(keys):
        entry, state = lines[2 * i], lines[2 * i + 1]
        # Drained, the report stream is empty: a record still naming a report names one that never ended.
        if entry != "":
            pending.append(key.rsplit(":", 1)[-1])
        states[state or "none"] += 1
    with open(f"{OUT}/port_report_states.json", "w") as f:
        json.dump({"records": len(keys), "states": states, "pending": len(pending), "pendingSample": pending[:20]}, f)
    event("port_report_states", records=len(keys), states=dict(states), pending=len(pending))


def collector():
    while not stop_all.is_set():
        take_records()
        stop_all.wait(2)


# ------------------------------------------------------------------ chaos
def emu_behavior(body):
    c = http.client.HTTPConnection("127.0.0.1", emu_port, timeout=5)
    if body is None and BASE_DELAY_MS > 0:
        body = {"delayMs": BASE_DELAY_MS}
    elif body is not None and BASE_DELAY_MS > 0 and "delayMs" not in body:
        body = {**body, "delayMs": BASE_DELAY_MS}
    if body is None:
        c.request("DELETE", "/_emulator/behavior")
    else:
        c.request("POST", "/_emulator/behavior", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    r.read()
    c.close()
    return r.status


def kill_dispatcher(d, sig):
    with d.busy:
        pid = d.signal(sig)
        event("kill", svc=d.name, inc=d.inc, pid=pid, sig="KILL" if sig == signal.SIGKILL else "TERM", consumer=d.consumer)
        t = now()
        try:
            d.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            event("term_timeout", svc=d.name, pid=pid)
            os.kill(pid, signal.SIGKILL)
            d.proc.wait()
        event("exited", svc=d.name, inc=d.inc, pid=pid, rc=d.proc.returncode, after=round(now() - t, 2))
        time.sleep(rng.uniform(0.5, 3))
        mode = start_dispatcher(d)
        event("restarted", svc=d.name, inc=d.inc, mode=mode, consumer=d.consumer)


def kill_ingress():
    with ingress.busy:
        pid = ingress.signal(signal.SIGKILL)
        event("kill", svc="ingress", inc=ingress.inc, pid=pid, sig="KILL")
        ingress.proc.wait()
        time.sleep(rng.uniform(0.5, 2))
        ingress.start()
        ingress.wait_ready()
        event("ready", svc="ingress", inc=ingress.inc)


def emulator_503_episode(seconds):
    event("emu_failing_begin", seconds=seconds, statuses=[500, 503])
    emu_behavior({"failureRate": 1.0, "failureStatuses": [500, 503]})
    time.sleep(seconds)
    emu_behavior(None)
    event("emu_failing_end")


def emulator_slow_episode(seconds, delay_ms):
    event("emu_slow_begin", seconds=seconds, delayMs=delay_ms)
    emu_behavior({"delayMs": delay_ms})
    time.sleep(seconds)
    emu_behavior(None)
    event("emu_slow_end")


def emulator_restart():
    with emulator.busy:
        # Fail everything first, so that nothing the emulator answers 2xx can be recorded between the last take and the kill.
        emu_behavior({"failureRate": 1.0, "failureStatuses": [503]})
        if PORT:
            port_down(True)
        event("emu_restart_fail_all")
        time.sleep(2)
        n = take_records()
        pid = emulator.signal(signal.SIGKILL)
        event("kill", svc="emulator", inc=emulator.inc, pid=pid, sig="KILL", taken_before=n)
        emulator.proc.wait()
        time.sleep(rng.uniform(2, 5))
        emulator.start()
        emulator.wait_ready()
        emu_behavior(None)
        event("ready", svc="emulator", inc=emulator.inc)


def port_down(down):
    c = http.client.HTTPConnection("127.0.0.1", emu_port, timeout=5)
    c.request("POST", "/_emulator/port/behavior", json.dumps({"down": down}), {"Content-Type": "application/json"})
    c.getresponse().read()
    c.close()


def chaos():
    t_start = now()
    specials = [(SEND_SECONDS * 0.25, "emu503"), (SEND_SECONDS * 0.5, "emurestart"), (SEND_SECONDS * 0.72, "emuslow")]
    while not stop_chaos.is_set():
        stop_chaos.wait(rng.uniform(5, 20))
        if stop_chaos.is_set():
            break
        elapsed = now() - t_start
        if specials and elapsed >= specials[0][0]:
            _, what = specials.pop(0)
            if what == "emu503":
                threading.Thread(target=emulator_503_episode, args=(25,), daemon=True).start()
            elif what == "emurestart":
                threading.Thread(target=emulator_restart, daemon=True).start()
            else:
                threading.Thread(target=emulator_slow_episode, args=(10, 7000), daemon=True).start()
            continue
        choice = rng.choices(["d_kill", "d_term", "i_kill"], [70, 15, 15])[0]
        if choice == "i_kill":
            if ingress.busy.locked():
                continue
            threading.Thread(target=kill_ingress, daemon=True).start()
        else:
            free = [d for d in dispatchers if not d.busy.locked()]
            if not free:
                continue
            d = rng.choice(free)
            threading.Thread(target=kill_dispatcher, args=(d, signal.SIGKILL if choice == "d_kill" else signal.SIGTERM), daemon=True).start()


def monitor():
    while not stop_all.is_set():
        for s in [redis, emulator, ingress, *dispatchers]:
            if s.proc is not None and s.proc.poll() is not None and not s.expected_down:
                event("UNEXPECTED_EXIT", svc=s.name, inc=s.inc, rc=s.proc.returncode)
                s.expected_down = True
        stop_all.wait(1)


def status_line():
    while not stop_all.is_set():
        stop_all.wait(30)
        info = {"sent": sent_counter[0], "outcomes": dict(outcome_counts), "records": record_counts[0], "port_calls": port_call_counts[0],
                "xlen": redis_cli("XLEN", "{portazure}:runs"), "retries": redis_cli("ZCARD", "{portazure}:retries"),
                "deadletters": redis_cli("ZCARD", "{portazure}:deadletters"), "queue": work.qsize()}
        event("status", **info)


def wait_quiet(limit):
    t0 = now()
    while now() - t0 < limit:
        xlen = int(redis_cli("XLEN", "{portazure}:runs") or -1)
        pend = redis_cli("XPENDING", "{portazure}:runs", "dispatchers").split("\n")[0]
        retries = int(redis_cli("ZCARD", "{portazure}:retries") or -1)
        # The Port reports: each leaves its stream once sent.
        reports = int(redis_cli("XLEN", "{portazure}:port-reports") or 0) if PORT else 0
        if xlen == 0 and pend == "0" and retries == 0 and reports == 0:
            return True, round(now() - t0, 1)
        time.sleep(1)
    return False, round(now() - t0, 1)


def build():
    if os.environ.get("SOAK_NO_BUILD") == "1":
        return
    for project in ("PortAzure.Ingress", "PortAzure.Dispatcher", "PortAzure.AzureDevOpsEmulator"):
        subprocess.run(["dotnet", "build", f"{ROOT}/{project}", "-c", "Release", "-v", "quiet", "-nologo"], check=True)


def main():
    build()
    event("config", port=PORT, base_delay_ms=BASE_DELAY_MS, seed=SEED, out=OUT, rate=RATE, send_seconds=SEND_SECONDS, workers=WORKERS, dispatcher=DISPATCHER_SETTINGS,
          ports={"redis": redis_port, "emulator": emu_port, "ingress": ing_port, "dispatchers": disp_ports}, tag=RUN_TAG)
    redis.start()
    redis.wait_ready(None)
    emulator.start()
    ingress.start()
    emulator.wait_ready()
    ingress.wait_ready()
    emu_behavior(None)
    event("base_behavior", delayMs=BASE_DELAY_MS)
    for d in dispatchers:
        start_dispatcher(d, "newname" if d.name != "dispatcher3" else "auto")
    for d in dispatchers:
        d.wait_ready()
    threads = [threading.Thread(target=f, daemon=True) for f in (collector, monitor, status_line)]
    for t in threads:
        t.start()
    workers = [threading.Thread(target=worker, daemon=True) for _ in range(WORKERS)]
    for w in workers:
        w.start()
    prod = threading.Thread(target=producer, daemon=True)
    prod.start()
    ch = threading.Thread(target=chaos, daemon=True)
    ch.start()
    prod.join()
    stop_chaos.set()
    ch.join()
    # Let running chaos actions (restarts, episodes) end.
    time.sleep(2)
    for s in [ingress, emulator, *dispatchers]:
        with s.busy:
            pass
    try:
        emu_behavior(None)
    except OSError:
        pass
    event("chaos_stopped")
    # Let the client's retries finish.
    while work.qsize() > 0:
        time.sleep(1)
    time.sleep(12)
    for _ in workers:
        work.put(None)
    for w in workers:
        w.join(timeout=30)
    event("client_done", outcomes=dict(outcome_counts))
    for d in dispatchers:
        if d.proc.poll() is not None:
            event("restart_for_drain", svc=d.name)
            start_dispatcher(d, "auto")
    quiet, secs = wait_quiet(600)
    event("drain", quiet=quiet, seconds=secs)
    time.sleep(5)
    take_records()
    if PORT:
        take_port_report_states()
    # Dead letters and final Redis state.
    c = http.client.HTTPConnection("127.0.0.1", disp_ports[0], timeout=30)
    dead, cursor = [], None
    while True:
        c.request("GET", "/api/deadletters?limit=500" + (f"&cursor={cursor}" if cursor else ""), headers={"X-Api-Key": ADMIN})
        page = json.loads(c.getresponse().read())
        dead += page.get("items", [])
        cursor = page.get("nextCursor")
        if not cursor:
            break
    with open(f"{OUT}/deadletters.json", "w") as f:
        json.dump({"items": dead}, f)
    c.request("GET", "/api/stats", headers={"X-Api-Key": ADMIN})
    r = c.getresponse()
    open(f"{OUT}/stats.json", "wb").write(r.read())
    c.close()
    with open(f"{OUT}/redis-final.txt", "w") as f:
        for args in (["XLEN", "{portazure}:runs"], ["XPENDING", "{portazure}:runs", "dispatchers"], ["ZCARD", "{portazure}:retries"],
                     ["ZCARD", "{portazure}:deadletters"], ["HGETALL", "{portazure}:paused"], ["HGETALL", "{portazure}:retry-claims"],
                     ["XINFO", "CONSUMERS", "{portazure}:runs", "dispatchers"], ["DBSIZE"]):
            f.write("$ " + " ".join(args) + "\n" + redis_cli(*args) + "\n")
    # Stop: Dispatchers first (SIGTERM), then take the records once more.
    for d in dispatchers:
        d.signal(signal.SIGTERM)
    for d in dispatchers:
        d.proc.wait(timeout=40)
    take_records()
    stop_all.set()
    for s in [ingress, emulator, redis]:
        s.signal(signal.SIGTERM)
        s.proc.wait(timeout=30)
    event("done", records=record_counts[0], outcomes=dict(outcome_counts))


if __name__ == "__main__":
    try:
        main()
    except BaseException as e:
        event("ABORT", error=repr(e))
        for s in [*dispatchers, ingress, emulator, redis]:
            try:
                if s.proc and s.proc.poll() is None:
                    s.proc.kill()
            except Exception:
                pass
        raise
