#!/usr/bin/env python3
"""The reliability suites: the production binary (a separate process) against the simulator.

  crash     a group job plus single-device jobs, the service SIGKILLed at random moments and restarted
            (SQLite and PostgreSQL)
  replicas  two service processes on one PostgreSQL database split one group job
  outage    PostgreSQL restarted mid-run: /readyz reports it, work resumes without a service restart
  faults    random transient faults (429, 500, 503, hangs, dropped connections): every job succeeds;
            permanent faults (400, 401, 403) on some devices: those fail within 2 attempts, the rest succeed

Each check is judged from the simulator's final state and call log and the service's API, never from the
service's own word alone. `--size short` (the test command) and `--size long` (scripts/soak).
Prints a table of figures, then "N passed, M failed" last; exit 1 on any failure.

Usage: reliability.py --binary target/release/deprovisiond --sim target/debug/azure-iot-sim \
         --pg-url postgres://postgres@127.0.0.1:5432/postgres [--pg-bin DIR --pg-data DIR] \
         [--size short|long] [--suite crash,replicas,outage,faults]
"""

import argparse
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from container_smoke import free_port, read_json_document  # noqa: E402

SIZES = {
    "short": {"crash_devices": 600, "crash_singles": 10, "kills": 3, "replica_devices": 1500,
              "outage_devices": 600, "fault_devices": 300},
    "long": {"crash_devices": 5000, "crash_singles": 50, "kills": 5, "replica_devices": 10000,
             "outage_devices": 3000, "fault_devices": 2000},
}
TERMINAL = ("succeeded", "failed", "cancelled")
MUTATING = ("PUT", "DELETE", "POST")

passed = 0
failed = 0
figures = []
check_lock = threading.Lock()  # the fault suites of both stores run at once


def check(name, ok, detail=""):
    global passed, failed
    with check_lock:
        if ok:
            passed += 1
            print(f"ok   {name}", flush=True)
        else:
            failed += 1
            print(f"FAIL {name}{': ' + str(detail)[:600] if detail else ''}", flush=True)
    return ok


def http(method, url, body=None, timeout=15, headers=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            ctype = resp.headers.get("content-type", "")
            return resp.status, json.loads(raw) if raw and "json" in ctype else raw.decode()
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw or b"null")
        except ValueError:
            return e.code, raw.decode(errors="replace")
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
        return None, str(e)


class Sim:
    """The simulator binary with one DPS and two hubs, seeded with a fleet."""

    def __init__(self, binary, work, fleet, throttle=False, chaos=None):
        config = {
            "dps": [{"name": "rel-dps", "linked_hubs": [{"host": "rel-hub-1.azure-devices.net"},
                                                       {"host": "rel-hub-2.azure-devices.net"}]}],
            "hubs": [{"host": "rel-hub-1.azure-devices.net", "tier": "S3", "units": 10},
                     {"host": "rel-hub-2.azure-devices.net", "tier": "S3", "units": 10}],
            "throttle": {"enabled": throttle},
            "seed": 20261201,
            "call_log_capacity": 1_000_000,
        }
        cfg, fl = work / "sim.json", work / "fleet.json"
        cfg.write_text(json.dumps(config))
        fl.write_text(json.dumps(fleet))
        self.proc = subprocess.Popen([binary, "--config", str(cfg), "--fleet", str(fl)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.endpoints = json.loads(read_json_document(self.proc.stdout))
        self.admin = self.endpoints["admin"] if "admin" in self.endpoints else self.endpoints["dps"][0]["urls"][0]
        if chaos:
            self.put("/_sim/chaos", chaos)

    def url(self, path):
        return self.admin.rstrip("/") + path

    def get(self, path):
        status, body = http("GET", self.url(path), timeout=60)
        assert status == 200, f"simulator {path}: {status} {body}"
        return body

    def put(self, path, body):
        status, out = http("PUT", self.url(path), body)
        assert status == 200, f"simulator {path}: {status} {out}"

    def post(self, path, body):
        status, out = http("POST", self.url(path), body)
        assert status in (200, 201, 204), f"simulator {path}: {status} {out}"

    def state(self):
        return self.get("/_sim/state")

    def calls(self):
        return self.get("/_sim/calls")["calls"]

    def azure_config(self):
        dps = self.endpoints["dps"][0]
        return {
            "dps": [{"name": dps["name"], "connection_string": dps["connectionStrings"]["provisioningserviceowner"],
                     "base_url": dps["urls"][0]}],
            "hubs": [{"connection_string": h["connectionStrings"]["iothubowner"], "base_url": h["urls"][0],
                      "tier": h["tier"], "units": h["units"]} for h in self.endpoints["hubs"]],
        }

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Service:
    """`deprovisiond serve` (the release binary) as its own process; restartable on the same database."""

    def __init__(self, binary, work, db_url, azure_config, name="svc", extra_env=None):
        self.binary, self.work, self.name = binary, work, name
        self.port = free_port()
        cfg = work / f"{name}-azure.json"
        cfg.write_text(json.dumps(azure_config))
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "DATABASE_URL": db_url,
            "DEPROVISIOND_AZURE_CONFIG": str(cfg),
            "DEPROVISIOND_LISTEN": f"127.0.0.1:{self.port}",
            # A killed process's leases are taken over after this; short so the suites stay short.
            "DEPROVISIOND_LEASE_SECS": "3",
            "DEPROVISIOND_POLL_MS": "100",
            "DEPROVISIOND_BACKOFF_BASE_MS": "100",
            "DEPROVISIOND_BACKOFF_CAP_MS": "1000",
            "DEPROVISIOND_LOG_FORMAT": "json",
            "RUST_LOG": "warn",
            **(extra_env or {}),
        }
        self.api = f"http://127.0.0.1:{self.port}"
        self.proc = None
        self.starts = 0
        subprocess.run([binary, "migrate"], env=self.env, check=True, capture_output=True)
        self.start()

    def start(self):
        self.starts += 1
        log = open(self.work / f"{self.name}-{self.starts}.log", "w")
        self.proc = subprocess.Popen([self.binary, "serve"], env=self.env, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.time() + 60
        while time.time() < deadline:
            status, _ = http("GET", f"{self.api}/readyz", timeout=2)
            if status == 200:
                return
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited at start: {(self.work / f'{self.name}-{self.starts}.log').read_text()[-800:]}")
            time.sleep(0.1)
        raise SystemExit(f"{self.name} not ready after 60 s")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def create(self, body):
        status, job = http("POST", f"{self.api}/v1/deprovisions", body)
        assert status == 202, f"create: {status} {job}"
        return job["id"]

    def job(self, job_id):
        status, job = http("GET", f"{self.api}/v1/deprovisions/{job_id}")
        return job if status == 200 else None

    def devices(self, job_id, state=None):
        out, cursor = [], None
        while True:
            q = f"?limit=500{'&cursor=' + cursor if cursor else ''}"
            status, page = http("GET", f"{self.api}/v1/deprovisions/{job_id}/devices{q}")
            assert status == 200, f"devices: {status} {page}"
            out += [d for d in page["items"] if state is None or d["state"] == state]
            cursor = page.get("next_cursor")
            if not cursor:
                return out

    def metric(self, name):
        status, text = http("GET", f"{self.api}/metrics")
        total = 0.0
        if status == 200 and isinstance(text, str):
            for line in text.splitlines():
                if line.startswith(name) and not line.startswith("#"):
                    total += float(line.rsplit(" ", 1)[1])
        return total


def wait_terminal(svc, ids, timeout):
    deadline, jobs = time.time() + timeout, {}
    while time.time() < deadline:
        jobs = {i: svc.job(i) for i in ids}
        if all(j and j["status"] in TERMINAL for j in jobs.values()):
            return jobs
        time.sleep(0.5)
    return jobs


def group_request(gid, registry="disable"):
    return {"target": {"kind": "enrollment_group", "group_id": gid}, "registry": registry,
            "reason": {"code": "compromised", "text": "reliability suite"}}


def single_request(rid, registry="delete"):
    return {"target": {"kind": "individual_enrollment", "registration_id": rid}, "registry": registry,
            "reason": {"code": "stolen", "text": "reliability suite"}}


def hub_devices(state):
    return {d["deviceId"]: d for h in state["hubs"] for d in h["devices"]}


def fleet(group, devices, singles=0, prefix="single"):
    return {"dps": "rel-dps",
            "groups": [{"groupId": group, "attestation": "symmetricKey", "devices": devices}],
            "individuals": [{"registrationId": f"{prefix}-{i:03}", "attestation": "symmetricKey"}
                            for i in range(singles)]}


def device_calls(calls):
    """Hub registry calls per device id, in order (a bulk call under each device it names)."""
    per = defaultdict(list)
    for c in calls:
        if c["path"].startswith("/devices/") and c.get("entity_id"):
            per[c["entity_id"]].append(c)
        # A bulk POST /devices counts as a call for every device it names.
        for dev in c.get("entity_ids") or []:
            per[dev].append(c)
    return per


# --- crash ---------------------------------------------------------------------------------------------

def crash_suite(args, size, store):
    work = Path(tempfile.mkdtemp(prefix=f"rel-crash-{store}-"))
    n, singles, kills = size["crash_devices"], size["crash_singles"], size["kills"]
    # A little latency per call keeps the job running across the kills.
    sim = Sim(args.sim, work, fleet("crash-fleet", n, singles), chaos={"latency_fixed_ms": 5})
    db = db_url(args, store, work, "crash")
    svc = Service(args.binary, work, db, sim.azure_config(), "crash")
    t0 = time.time()
    try:
        ids = [svc.create(group_request("crash-fleet"))]
        ids += [svc.create(single_request(f"single-{i:03}")) for i in range(singles)]
        rng = random.Random(20261201)
        killed_at = []
        # One kill in each of `kills` equal slices of the job's progress, at a random point of the slice.
        for k in range(kills):
            threshold = int(n * (k + rng.random()) / (kills + 1))
            deadline = time.time() + 120
            job = svc.job(ids[0])
            while time.time() < deadline and job and job["progress"]["registry_done"] < threshold:
                time.sleep(0.02)
                job = svc.job(ids[0])
            killed_at.append(job["progress"]["registry_done"] if job else -1)
            svc.kill()
            svc.start()
        check(f"crash/{store}: every SIGKILL hit the group job mid-run (devices done at each: {killed_at})",
              all(0 <= k < n for k in killed_at))
        jobs = wait_terminal(svc, ids, 600)
        wall = time.time() - t0
        statuses = Counter(j["status"] if j else "lost" for j in jobs.values())
        check(f"crash/{store}: every job terminal and succeeded, none lost ({len(ids)} jobs, {kills} SIGKILLs)",
              statuses == Counter({"succeeded": len(ids)}), dict(statuses))
        state = sim.state()
        devs = hub_devices(state)
        group_ids = [f"crash-fleet-dev-{i:04}" for i in range(n)]
        wrong = [d for d in group_ids if devs.get(d, {}).get("status") != "disabled"]
        check(f"crash/{store}: all {n} group devices disabled in their hub", not wrong, wrong[:5])
        still = [f"single-{i:03}" for i in range(singles) if f"single-{i:03}" in devs]
        check(f"crash/{store}: all {singles} single devices deleted from their hub", not still, still[:5])
        calls = sim.calls()
        # No registry write before the revoke of that device's enrollment succeeded.
        revoked_at = {}
        for c in calls:
            if c["method"] == "PUT" and c["status"] == 200 and c["path"].startswith(("/enrollmentGroups/", "/enrollments/")):
                revoked_at.setdefault(c["entity_id"], c["seq"])
        early = []
        for dev, cs in device_calls(calls).items():
            owner = "crash-fleet" if dev.startswith("crash-fleet-") else dev
            first_write = next((c["seq"] for c in cs if c["method"] in MUTATING), None)
            if first_write is not None and (owner not in revoked_at or first_write < revoked_at[owner]):
                early.append(dev)
        check(f"crash/{store}: no registry write before its revoke succeeded", not early, early[:5])
        # Each crash may repeat at most the calls that were in flight: one repeated write per device per crash.
        repeats = {d: sum(1 for c in cs if c["method"] in MUTATING) - 1 for d, cs in device_calls(calls).items()}
        worst = max(repeats.values(), default=0)
        total_repeats = sum(max(r, 0) for r in repeats.values())
        check(f"crash/{store}: at most one repeated write per device per crash (worst {worst}, total {total_repeats})",
              worst <= kills, sorted(repeats.items(), key=lambda kv: -kv[1])[:5])
        figures.append(("crash", store, n + singles, f"{wall:.1f}", f"killed at {killed_at} of {n}; {total_repeats} repeated writes"))
    finally:
        svc.stop()
        sim.stop()


# --- replicas ------------------------------------------------------------------------------------------

def replicas_suite(args, size):
    work = Path(tempfile.mkdtemp(prefix="rel-replicas-"))
    n = size["replica_devices"]
    # A little latency per call so the job lasts long enough for both replicas to claim work.
    sim = Sim(args.sim, work, fleet("replica-fleet", n), chaos={"latency_fixed_ms": 2})
    db = db_url(args, "postgres", work, "replicas")
    a = Service(args.binary, work, db, sim.azure_config(), "replica-a")
    b = Service(args.binary, work, db, sim.azure_config(), "replica-b")
    t0 = time.time()
    try:
        job_id = a.create(group_request("replica-fleet"))
        jobs = wait_terminal(a, [job_id], 600)
        wall = time.time() - t0
        check(f"replicas: the {n}-device job succeeded", jobs[job_id] and jobs[job_id]["status"] == "succeeded",
              jobs[job_id] and jobs[job_id]["status"])
        calls_a = a.metric("deprovisiond_azure_calls_total")
        calls_b = b.metric("deprovisiond_azure_calls_total")
        check(f"replicas: both did work (Azure calls: {calls_a:.0f} and {calls_b:.0f})", calls_a > 0 and calls_b > 0)
        per = device_calls(sim.calls())
        doubled = [d for d, cs in per.items() if sum(1 for c in cs if c["method"] == "PUT") != 1]
        check("replicas: no device written twice (one PUT each in the call log)", not doubled and len(per) == n,
              f"{len(doubled)} doubled, {len(per)} of {n} seen: {doubled[:5]}")
        devs = hub_devices(sim.state())
        wrong = [d for d in devs if d.startswith("replica-fleet-") and devs[d].get("status") != "disabled"]
        check("replicas: every device disabled", not wrong, wrong[:5])
        figures.append(("replicas", "postgres", n, f"{wall:.1f}", f"calls {calls_a:.0f} + {calls_b:.0f}"))
    finally:
        a.stop()
        b.stop()
        sim.stop()


# --- outage --------------------------------------------------------------------------------------------

def pg_ctl(args, action):
    log = str(Path(args.pg_data).parent / "outage-suite.log")
    cmd = [f"{args.pg_bin}/pg_ctl", "-D", args.pg_data, "-l", log, "-w", "-t", "60", "-m", "fast", action]
    if action == "start":
        # The server's own options (port, sockets, settings) as it was started: pg_ctl start forgets them.
        opts = shlex.split((Path(args.pg_data) / "postmaster.opts").read_text())[1:]
        while "-D" in opts:
            i = opts.index("-D")
            del opts[i : i + 2]
        cmd += ["-o", shlex.join(opts)]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--"] + cmd
    # No pipes: the server inherits pg_ctl's stdout, and a pipe would never reach EOF.
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/tmp")


def outage_suite(args, size):
    work = Path(tempfile.mkdtemp(prefix="rel-outage-"))
    n = size["outage_devices"]
    sim = Sim(args.sim, work, fleet("outage-fleet", n), chaos={"latency_fixed_ms": 20})
    db = db_url(args, "postgres", work, "outage")
    svc = Service(args.binary, work, db, sim.azure_config(), "outage")
    try:
        job_id = svc.create(group_request("outage-fleet"))
        deadline = time.time() + 120
        while time.time() < deadline:
            job = svc.job(job_id)
            if job and job["progress"]["registry_done"] >= n // 5:
                break
            time.sleep(0.1)
        pg_ctl(args, "stop")
        down_at = time.time()
        not_ready = False
        while time.time() - down_at < 5:
            status, _ = http("GET", f"{svc.api}/readyz", timeout=3)
            if status == 503:
                not_ready = True
                break
            time.sleep(0.2)
        check("outage: /readyz answers 503 while PostgreSQL is down", not_ready)
        time.sleep(2)
        pg_ctl(args, "start")
        up_at = time.time()
        before, resumed_after = None, None
        while time.time() - up_at < 30:
            job = svc.job(job_id)
            if job:
                done = job["progress"]["registry_done"]
                if before is None:
                    before = done
                elif done > before or job["status"] in TERMINAL:
                    resumed_after = time.time() - up_at
                    break
            time.sleep(0.1)
        check(f"outage: work resumed within 10 s of PostgreSQL's return, no restart "
              f"({'%.1f s' % resumed_after if resumed_after is not None else 'never'})",
              resumed_after is not None and resumed_after <= 10 and svc.proc.poll() is None)
        jobs = wait_terminal(svc, [job_id], 300)
        check("outage: the job succeeded", jobs[job_id] and jobs[job_id]["status"] == "succeeded",
              jobs[job_id] and jobs[job_id]["status"])
        devs = hub_devices(sim.state())
        wrong = [f"outage-fleet-dev-{i:04}" for i in range(n) if devs.get(f"outage-fleet-dev-{i:04}", {}).get("status") != "disabled"]
        check(f"outage: all {n} devices disabled, nothing lost", not wrong, wrong[:5])
        figures.append(("outage", "postgres", n, "-", f"resumed after {resumed_after or float('nan'):.1f} s"))
    finally:
        svc.stop()
        sim.stop()


# --- faults --------------------------------------------------------------------------------------------

def faults_suite(args, size, store):
    work = Path(tempfile.mkdtemp(prefix=f"rel-faults-{store}-"))
    n = size["fault_devices"]
    chaos = {"latency_fixed_ms": 0, "latency_random_ms": 0, "p_429": 0.05, "p_500": 0.05, "p_503": 0.05,
             "p_timeout": 0.02, "p_drop": 0.03, "hang_ms": 300}
    sim = Sim(args.sim, work, fleet("faults-fleet", n, 5, prefix="faulty"), chaos=chaos)
    db = db_url(args, store, work, "faults")
    svc = Service(args.binary, work, db, sim.azure_config(), "faults")
    try:
        t0 = time.time()
        ids = [svc.create(group_request("faults-fleet"))] + [svc.create(single_request(f"faulty-{i:03}")) for i in range(5)]
        jobs = wait_terminal(svc, ids, 600)
        statuses = Counter(j["status"] if j else "lost" for j in jobs.values())
        check(f"faults/{store}: 20 % transient faults, every job succeeds", statuses == Counter({"succeeded": len(ids)}),
              dict(statuses))
        calls = sim.calls()
        faulted = sum(1 for c in calls if c.get("fault"))
        figures.append(("faults (transient)", store, n + 5, f"{time.time() - t0:.1f}",
                        f"{faulted} of {len(calls)} calls faulted"))
        # Permanent faults: a second group, three devices refused for good with 400, 401 and 403.
        sim.put("/_sim/chaos", {"latency_fixed_ms": 0})
        sim.post("/_sim/seed", {"dps": "rel-dps", "groups": [{"groupId": "perm-fleet", "attestation": "symmetricKey",
                                                               "devices": 30}]})
        refused = {"perm-fleet-dev-0003": 400, "perm-fleet-dev-0011": 401, "perm-fleet-dev-0020": 403}
        for dev, status in refused.items():
            sim.post("/_sim/faults", {"method": "PUT", "path": "/devices/*", "entity_id": dev, "times": None,
                                      "action": {"type": "status", "status": status}})
        job_id = svc.create(group_request("perm-fleet"))
        job = wait_terminal(svc, [job_id], 300)[job_id]
        check(f"faults/{store}: permanent faults fail the job", job and job["status"] == "failed", job and job["status"])
        bad = {d.get("device_id") or d["registration_id"]: d for d in svc.devices(job_id, "failed")}
        check(f"faults/{store}: exactly the refused devices failed", set(bad) == set(refused), sorted(bad))
        slow = {d: v["attempt"] for d, v in bad.items() if v["attempt"] > 2}
        check(f"faults/{store}: each failed within 2 attempts", not slow, slow)
        codes = {d: (v.get("last_error") or {}).get("http_status") for d, v in bad.items()}
        check(f"faults/{store}: each carries Azure's status", codes == refused, codes)
        devs = hub_devices(sim.state())
        others = [f"perm-fleet-dev-{i:04}" for i in range(30) if f"perm-fleet-dev-{i:04}" not in refused]
        wrong = [d for d in others if devs[d]["status"] != "disabled"]
        check(f"faults/{store}: the other 27 devices are disabled", not wrong, wrong[:5])
    finally:
        svc.stop()
        sim.stop()


def faults_thread(args, size, store):
    try:
        faults_suite(args, size, store)
    except Exception as err:  # a crash in one store's thread is a failed check, not a lost one
        check(f"faults/{store}: the suite ran to the end", False, repr(err))


def db_url(args, store, work, name):
    if store == "sqlite":
        return f"sqlite://{work}/{name}.db?mode=rwc"
    db = f"rel_{name}_{os.getpid()}"
    subprocess.run(["psql", args.pg_url, "-qc", f"DROP DATABASE IF EXISTS {db}"], check=True, capture_output=True)
    subprocess.run(["psql", args.pg_url, "-qc", f"CREATE DATABASE {db}"], check=True, capture_output=True)
    return f"{args.pg_url.rpartition('/')[0]}/{db}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--sim", required=True)
    ap.add_argument("--pg-url", required=True)
    ap.add_argument("--pg-bin", help="PostgreSQL server binaries, for the outage suite")
    ap.add_argument("--pg-data", help="the cluster's data folder, for the outage suite")
    ap.add_argument("--size", choices=SIZES, default="short")
    ap.add_argument("--suite", default="crash,replicas,outage,faults")
    args = ap.parse_args()
    size, suites = SIZES[args.size], args.suite.split(",")
    t0 = time.time()
    if "crash" in suites:
        for store in ("sqlite", "postgres"):
            crash_suite(args, size, store)
    if "replicas" in suites:
        replicas_suite(args, size)
    if "outage" in suites:
        if args.pg_bin and args.pg_data:
            outage_suite(args, size)
        else:
            check("outage: needs --pg-bin and --pg-data (a cluster this script may restart)", False)
    if "faults" in suites:
        # Both stores at once: the suite mostly waits out injected hangs and backoffs, and each store has its
        # own simulator and service, so neither sees the other's calls.
        runs = [threading.Thread(target=faults_thread, args=(args, size, store)) for store in ("sqlite", "postgres")]
        for run in runs:
            run.start()
        for run in runs:
            run.join()
    print()
    print(f"{'suite':<20} {'store':<9} {'devices':>8} {'wall s':>7}  figures")
    for suite, store, n, wall, extra in figures:
        print(f"{suite:<20} {store:<9} {n:>8} {wall:>7}  {extra}")
    print(f"\n{args.size} run, {time.time() - t0:.0f} s")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
