#!/usr/bin/env python3
"""Runs the production binary (release in the image, its debug build in the test command) the way the container image and docker-compose.yml would, without Docker.

What it takes from the two files (so a change to either is tested):
  - Dockerfile: ENTRYPOINT, CMD, ENV and the HEALTHCHECK command;
  - docker-compose.yml (through `docker-compose config`): the `migrate` and `deprovisiond` services'
    command and environment, their secrets (mounted under /run/secrets/<name>), stop signal and grace period.

Then: the migrate command must exit 0 against a fresh PostgreSQL database; the service must pass the image's
HEALTHCHECK, take a job and finish it against the simulator; the stop signal must stop it cleanly within the
grace period. Secret paths are remapped to temporary files and the port to a free one; nothing else changes.

Usage: container_smoke.py --binary target/production/deprovisiond --sim target/debug/azure-iot-sim \
         --compose .tools/bin/docker-compose --pg-url postgres://postgres@127.0.0.1:5432/postgres
Last line: "N passed, M failed".
"""

import argparse
import hashlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
passed = 0
failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name}{': ' + detail if detail else ''}")
    return ok


def dockerfile_facts(text):
    """ENTRYPOINT, CMD, ENV and HEALTHCHECK CMD of the final stage (JSON-array forms)."""
    text = re.sub(r"\\\n", " ", text)
    final = text[text.rindex("\nFROM ") :]
    facts = {"env": {}}
    for line in final.splitlines():
        line = line.strip()
        if line.startswith("ENTRYPOINT "):
            facts["entrypoint"] = json.loads(line[len("ENTRYPOINT ") :])
        elif line.startswith("CMD "):
            facts["cmd"] = json.loads(line[len("CMD ") :])
        elif line.startswith("HEALTHCHECK "):
            facts["healthcheck"] = json.loads(line[line.index(" CMD ") + len(" CMD ") :])
        elif line.startswith("ENV "):
            for pair in shlex.split(line[len("ENV ") :]):
                key, _, value = pair.partition("=")
                facts["env"][key] = value
    return facts


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


API_KEY = "dpk_container-smoke-" + os.urandom(12).hex()


def http(method, url, body=None, timeout=10, key=True):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if key:
        req.add_header("authorization", f"Bearer {API_KEY}")
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def service_env(service, secrets_dir, port):
    """The compose service's environment with /run/secrets/<name> paths and the port remapped."""
    env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
    for key, value in list(env.items()):
        if value.startswith("/run/secrets/"):
            env[key] = str(secrets_dir / value[len("/run/secrets/") :])
    if "DEPROVISIOND_LISTEN" in env:
        host = env["DEPROVISIOND_LISTEN"].rsplit(":", 1)[0]
        env["DEPROVISIOND_LISTEN"] = f"{host}:{port}"
    return env


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
    ap.add_argument("--sim", required=True)
    ap.add_argument("--compose", required=True)
    ap.add_argument("--pg-url", required=True)
    args = ap.parse_args()

    facts = dockerfile_facts((ROOT / "Dockerfile").read_text())
    compose = json.loads(
        subprocess.run(
            [args.compose, "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    services = compose["services"]
    app, migrate = services["deprovisiond"], services["migrate"]
    check("image entrypoint is the binary", facts.get("entrypoint", [None])[0] == "/usr/local/bin/deprovisiond")
    check("compose service runs `serve`", (app.get("command") or facts.get("cmd")) == ["serve"])

    work = Path(tempfile.mkdtemp(prefix="deprovisiond-smoke-"))
    secrets = work / "secrets"
    secrets.mkdir()
    procs = []
    try:
        # A fresh database on the given server, named after this run.
        db = f"smoke_{os.getpid()}"
        subprocess.run(["psql", args.pg_url, "-qc", f"CREATE DATABASE {db}"], check=True)
        base, _, _ = args.pg_url.rpartition("/")
        (secrets / "database-url").write_text(f"{base}/{db}\n")

        # The simulator stands in for Azure; the Azure configuration file points at it.
        sim = subprocess.Popen(
            [args.sim, "--fleet", str(ROOT / "crates/azure-iot-sim/examples/fleet.json")],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        procs.append(sim)
        endpoints = json.loads(read_json_document(sim.stdout))
        dps = endpoints["dps"][0]
        azure = {
            "dps": [
                {
                    "name": dps["name"],
                    "connection_string": dps["connectionStrings"]["provisioningserviceowner"],
                    "base_url": dps["urls"][0],
                }
            ],
            "hubs": [
                {
                    "connection_string": h["connectionStrings"]["iothubowner"],
                    "base_url": h["urls"][0],
                    "tier": h["tier"],
                    "units": h["units"],
                }
                for h in endpoints["hubs"]
            ],
        }
        secret_files = {s["source"]: s["target"] for s in app.get("secrets", [])}
        azure_target = secret_files.get("azure-config", "/run/secrets/azure-config")
        (secrets / Path(azure_target).name).write_text(json.dumps(azure))
        # The API key the compose file's secret holds: its SHA-256 only.
        keys_target = secret_files.get("api-keys", "/run/secrets/api-keys")
        digest = hashlib.sha256(API_KEY.encode()).hexdigest()
        (secrets / Path(keys_target).name).write_text(f"smoke:operator:{digest}\n")

        port = free_port()
        base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        # The image's ENV first, then the compose file's environment over it, as Docker does.
        image_env = dict(facts["env"])
        migrate_env = {**base_env, **image_env, **service_env(migrate, secrets, port)}
        result = subprocess.run([args.binary, *migrate["command"]], env=migrate_env, capture_output=True, text=True)
        check("migrate service exits 0", result.returncode == 0, result.stderr.strip()[-400:])

        app_env = {**base_env, **image_env, **service_env(app, secrets, port)}
        # Logs go to stderr; stdout carries only the "listening on" line for people.
        log = open(work / "serve.log", "w")
        serve = subprocess.Popen(
            [args.binary, *app["command"]], env=app_env, stdout=subprocess.DEVNULL, stderr=log
        )
        procs.append(serve)

        probe = [args.binary if c == facts["entrypoint"][0] else c for c in facts["healthcheck"]]
        probe = [c.replace(":8080/", f":{port}/") for c in probe]
        healthy = False
        deadline = time.time() + 60
        while time.time() < deadline and serve.poll() is None:
            if subprocess.run(probe, capture_output=True).returncode == 0:
                healthy = True
                break
            time.sleep(0.5)
        check("HEALTHCHECK passes", healthy, (work / "serve.log").read_text()[-600:])

        api = f"http://127.0.0.1:{port}"
        status, job = http(
            "POST",
            f"{api}/v1/deprovisions",
            {"target": {"kind": "individual_enrollment", "registration_id": "thermostat-1"}, "reason": {"code": "stolen"}},
        )
        check("a job is accepted", status == 202, f"{status} {job}")
        anonymous, _ = http("GET", f"{api}/v1/deprovisions", key=False)
        check("without a key the API answers 401 (authentication is on)", anonymous == 401, str(anonymous))
        final = None
        deadline = time.time() + 60
        while status == 202 and time.time() < deadline:
            _, final = http("GET", f"{api}/v1/deprovisions/{job['id']}")
            if final and final.get("status") in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.3)
        check("the job succeeds against the simulator", bool(final) and final.get("status") == "succeeded", json.dumps(final)[:400])

        log_text = (work / "serve.log").read_text()
        lines = [l for l in log_text.splitlines() if l.strip()]
        check(
            "logs are JSON, as the image asks",
            bool(lines) and all(l.lstrip().startswith("{") for l in lines),
            lines[0][:200] if lines else "no log lines",
        )

        stop = getattr(signal, app.get("stop_signal", facts.get("stopsignal", "SIGTERM")))
        grace = parse_duration(app.get("stop_grace_period", "10s"))
        serve.send_signal(stop)
        try:
            code = serve.wait(timeout=grace)
            check(f"{stop.name} stops it within the {grace:.0f} s grace period, exit 0", code == 0, f"exit {code}")
        except subprocess.TimeoutExpired:
            check(f"{stop.name} stops it within the {grace:.0f} s grace period", False, "still running")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        subprocess.run(["rm", "-rf", str(work)])
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


def read_json_document(stream):
    """Reads one pretty-printed JSON document (the simulator's endpoints) from a pipe."""
    text, depth, started = "", 0, False
    while True:
        line = stream.readline()
        if not line:
            raise SystemExit("the simulator exited before printing its endpoints")
        text += line
        depth += line.count("{") - line.count("}")
        started = started or "{" in line
        if started and depth == 0:
            return text


def parse_duration(text):
    text = str(text)
    if text.endswith("ms"):
        return float(text[:-2]) / 1000
    units = {"s": 1, "m": 60, "h": 3600}
    return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)


if __name__ == "__main__":
    sys.exit(main())
