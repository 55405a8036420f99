#!/usr/bin/env python3
"""Benchmark: time from a failed health check to the previous revision verified again.

Applies v1 (N healthy services) to the real systemd of the project's test bed, then applies
v2 (one service broken: ExecStart=/bin/false) several times. Each apply of v2 fails
verification and core-ops rolls back to v1 automatically; the results document reports
`rollback.duration_ms`: from the failed verification of v2 to v1 verified again (plan of v1,
writes, one reload, restarts, verification). Printed for the default settle window (1500 ms,
part of every verification) and a short one (300 ms). With no settle window at all a
`Type=simple` service that exits at once can still look active when verification reads it,
which is why the window exists.

Usage: scripts/bench-rollback.py [--services N] [--runs R] [--json]   (root)
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTBED = os.path.join(ROOT, "scripts", "systemd-testbed.sh")
BIN = os.path.join(ROOT, "target", "release", "core-ops")


def sh(*args, **kw):
    return subprocess.run(args, check=True, text=True, capture_output=True, **kw)


def write_revision(tree, prefix, n, broken):
    subprocess.run(["rm", "-rf", os.path.join(tree, "services"), os.path.join(tree, "hosts")], check=True)
    names = []
    for i in range(n):
        svc = f"s{i:03d}"
        names.append(svc)
        d = os.path.join(tree, "services", svc)
        os.makedirs(d, exist_ok=True)
        exec_start = "/bin/false" if (broken and i == 0) else "/bin/sleep infinity"
        with open(os.path.join(d, f"{prefix}-{svc}.service"), "w") as f:
            f.write(f"[Service]\nExecStart={exec_start}\n\n[Install]\nWantedBy=multi-user.target\n")
    os.makedirs(os.path.join(tree, "hosts", "bench"), exist_ok=True)
    with open(os.path.join(tree, "hosts", "bench", "host.yaml"), "w") as f:
        f.write("services: [" + ", ".join(names) + "]\npolicy:\n  auto_rollback: true\n  max_attempts: 1000\n")


def commit(tree, msg):
    env = dict(os.environ, GIT_AUTHOR_DATE="2026-01-01T00:00:00Z", GIT_COMMITTER_DATE="2026-01-01T00:00:00Z")
    sh("git", "-C", tree, "add", "-A", env=env)
    sh("git", "-C", tree, "-c", "user.name=bench", "-c", "user.email=bench@core-ops.invalid",
       "commit", "-q", "-m", msg, env=env)
    return sh("git", "-C", tree, "rev-parse", "HEAD").stdout.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=10)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench-rollback.py: run as root (the systemd test bed needs it)")
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    bed = "/tmp/cob-rollback"
    subprocess.run([TESTBED, "down", bed], capture_output=True)
    out = sh(TESTBED, "up", bed).stdout
    info = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    rows = []
    try:
        work = tempfile.mkdtemp(prefix="rb-", dir=bed)
        tree = os.path.join(work, "repo")
        os.makedirs(tree)
        sh("git", "-C", tree, "init", "-q", "-b", "main")
        prefix = f"rb{os.getpid()}"
        write_revision(tree, prefix, a.services, broken=False)
        v1 = commit(tree, "v1")
        write_revision(tree, prefix, a.services, broken=True)
        v2 = commit(tree, "v2")
        env = dict(os.environ,
                   CORE_OPS_SYSTEMD_ADDRESS=info["SYSTEMD_TESTBED_ADDRESS"],
                   CORE_OPS_SYSTEMD_UNIT_DIR=info["SYSTEMD_TESTBED_UNIT_DIR"],
                   CORE_OPS_STATE_DIR=os.path.join(work, "state"),
                   CORE_OPS_QUADLET_DIR=os.path.join(work, "quadlet"),
                   CORE_OPS_HOST_FILE_ROOTS=os.path.join(work, "etc"),
                   CORE_OPS_METRICS_FILE="")

        def apply(rev, settle):
            e = dict(env, CORE_OPS_SETTLE_MS=str(settle))
            t0 = time.monotonic()
            p = subprocess.run([BIN, "--json", "apply", "--repo", tree, "--host", "bench", "--rev", rev],
                               env=e, text=True, capture_output=True)
            wall = (time.monotonic() - t0) * 1000
            try:
                return p.returncode, json.loads(p.stdout), wall
            except json.JSONDecodeError:
                sys.exit(f"apply {rev} printed no JSON (exit {p.returncode}):\n{p.stderr}")

        for settle in (1500, 300):
            code, r, _ = apply(v1, settle)
            if code != 0:
                sys.exit(f"v1 did not converge: {r.get('diagnostics')}")
            durations, walls = [], []
            for _ in range(a.runs):
                code, r, wall = apply(v2, settle)
                rb = r.get("rollback")
                if code != 3 or not rb or rb["outcome"] != "converged" or rb["to_revision"] != v1:
                    sys.exit(f"expected an automatic rollback to v1, got exit {code}: {json.dumps(r)[:2000]}")
                durations.append(rb["duration_ms"])
                walls.append(wall)
            rows.append({"settle_ms": settle, "runs": a.runs,
                         "rollback_ms": [min(durations), statistics.median(durations), max(durations)],
                         "whole_apply_ms": [round(min(walls)), round(statistics.median(walls)), round(max(walls))]})
    finally:
        subprocess.run([TESTBED, "down", bed], capture_output=True)
        subprocess.run(["rm", "-rf", bed])
    version = sh(BIN, "--version").stdout.strip()
    if a.json:
        print(json.dumps({"core_ops": version, "services": a.services, "rows": rows}, indent=2))
        return
    print(f"{version}; {a.services} services, one broken in v2; {os.cpu_count()} cores")
    print("failed health check -> previous revision verified again (rollback.duration_ms)")
    print(f"{'settle ms':>9} | {'runs':>4} | {'rollback min/median/max ms':>28} | {'whole apply of v2 incl. rollback, ms':>36}")
    for r in rows:
        rb = "/".join(str(x) for x in r["rollback_ms"])
        wa = "/".join(str(x) for x in r["whole_apply_ms"])
        print(f"{r['settle_ms']:>9} | {r['runs']:>4} | {rb:>28} | {wa:>36}")


if __name__ == "__main__":
    main()
