#!/usr/bin/env python3
"""scripts/bench.py - benchmark core-ops against a real systemd in the project's test bed.

Parts (one plain-text table each; --json prints one machine-readable document instead):
  1. plan:  no-change `core-ops plan` of 200 converged services, wall ms and max RSS of the
            child (15 runs after 2 warm-ups), with systemd (the bed, over D-Bus) and without
            (no address, no /run/systemd/system: unit state "unknown", files only).
            Issue goal: < 50 ms wall and < 20 MB max RSS, measured WITH systemd.
  2. anchor: core-ops INSIDE the bed (default settings, and CORE_OPS_SETTLE_MS=0 as an extra
            column) against the shell floor, both timed in the bed with $EPOCHREALTIME
            (core-ops under GNU time for its peak RSS, in a clean environment that is set
            up before the clock starts, as systemd hands one to core-ops.service; the
            bench's own writes are synced to disk before each clock starts):
            apply of N new units (N = 50, 200; floor: cp -a; systemctl daemon-reload; systemctl
            enable --no-reload --now), at the largest N the change of one drop-in (floor: cp;
            daemon-reload; systemctl restart) and the no-op re-run (floor: diff -rq of the
            desired tree + one systemctl list-units of the N units). Ratios against the floor
            of the same run; issue 17's goals: apply <= 1.0x with exactly 1 reload, change
            <= 1.2x with exactly 1 restart, no-op <= 1.5x the floor no-op with unit state and
            < 20 ms, peak RSS < 20 MB.
  A header line gives nproc, kernel, load, systemd version (from the bed) and core-ops --version.

Python 3.11 standard library only. Must run as root (the bed needs namespaces and mounts).
Usage: scripts/bench.py [--json] [--no-build] [--bed-dir /tmp/cob-bench] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "core-ops"
TESTBED = ROOT / "scripts" / "systemd-testbed.sh"
HOST = "bench"
GIT_DATE = "2024-01-01T00:00:00+0000"

UNIT_TEXT = (
    "[Unit]\nDescription=core-ops bench unit\n\n"
    "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n\n"
    "[Install]\nWantedBy=multi-user.target\n"
)
DROPIN_TEXT = "[Service]\nEnvironment=X=1\n"
DROPIN_CHANGED = "[Service]\nEnvironment=X=2\n"


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def run(cmd, *, env=None, cwd=None, check=True, what=None) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise BenchError(
            f"{what or cmd[0]} failed (exit {p.returncode}): {' '.join(map(str, cmd))[:300]}\n"
            f"--- stdout ---\n{p.stdout[-4000:]}\n--- stderr ---\n{p.stderr[-4000:]}"
        )
    return p


GNU_TIME = "/usr/bin/time"


def timed(cmd, env, scratch: Path):
    """Run cmd: (wall ms, max RSS KiB, exit code, stdout, stderr).

    The max RSS comes from GNU time (`%M`), not from wait4 in this process: a child forked
    from Python carries Python's own resident set (~14 MiB) in its ru_maxrss until it execs,
    which would be counted as core-ops' memory. GNU time forks from a ~1 MiB process."""
    out_p, err_p, rss_p = scratch / "child.out", scratch / "child.err", scratch / "child.rss"
    with open(out_p, "wb") as out, open(err_p, "wb") as err:
        t0 = time.perf_counter()
        p = subprocess.run([GNU_TIME, "-f", "%M", "-o", str(rss_p), *map(str, cmd)], env=env,
                           stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        t1 = time.perf_counter()
    rss = int(rss_p.read_text().split()[-1])
    return (t1 - t0) * 1000.0, rss, p.returncode, out_p.read_text(), err_p.read_text()


def stats(xs):
    if not xs:
        return None
    return {"n": len(xs), "min": min(xs), "median": statistics.median(xs), "max": max(xs)}


def span(vals) -> str:
    vals = sorted(set(vals))
    if not vals:
        return "-"
    return str(vals[0]) if len(vals) == 1 else f"{vals[0]}-{vals[-1]}"


# ----------------------------------------------------------------------------- the bed
class Bed:
    def __init__(self, d: Path):
        self.dir = d
        self.info: dict[str, str] = {}

    def up(self) -> None:
        st = run([str(TESTBED), "status", str(self.dir)], check=False)
        if st.returncode == 0:
            raise BenchError(
                f"a test bed is already running at {self.dir} (another bench run, or a killed one);"
                f" stop it with: {TESTBED} down {self.dir}"
            )
        if self.dir.exists():
            # our own scratch dir from an earlier run; units/ persists across up/down
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        p = run([str(TESTBED), "up", str(self.dir)], what="testbed up")
        for line in p.stdout.splitlines():
            if "=" in line:
                k, v = line.split("=", 1)
                self.info[k.strip()] = v.strip()
        for k in ("SYSTEMD_TESTBED_ADDRESS", "SYSTEMD_TESTBED_UNIT_DIR"):
            if k not in self.info:
                raise BenchError(f"testbed up did not print {k}:\n{p.stdout}\n{p.stderr}")

    def down(self) -> None:
        p = run([str(TESTBED), "down", str(self.dir)], check=False)
        if p.returncode != 0:
            log(f"WARNING: testbed down failed (exit {p.returncode}): {p.stderr.strip()}")

    @property
    def address(self) -> str:
        return self.info["SYSTEMD_TESTBED_ADDRESS"]

    @property
    def unit_dir(self) -> str:
        return self.info["SYSTEMD_TESTBED_UNIT_DIR"]

    def exec(self, *args, check=True, what=None) -> subprocess.CompletedProcess:
        env = dict(os.environ, LC_ALL="C")
        return run([str(TESTBED), "exec", str(self.dir), *args], env=env, check=check,
                   what=what or f"bed: {args[0]}")

    def show(self, units, props):
        """`systemctl show` inside the bed: {unit: {prop: value}}."""
        out = {}
        for i in range(0, len(units), 100):
            chunk = units[i:i + 100]
            p = self.exec("systemctl", "show", "-p", ",".join(["Id", *props]), *chunk)
            for block in p.stdout.strip().split("\n\n"):
                kv = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
                if "Id" in kv:
                    out[kv["Id"]] = kv
        return out

    def verify_active(self, units, dropin: str, what: str) -> None:
        got = self.show(units, ["LoadState", "ActiveState", "SubState", "UnitFileState",
                                "DropInPaths"])
        bad = []
        for u in units:
            s = got.get(u)
            if (s is None or s.get("LoadState") != "loaded" or s.get("ActiveState") != "active"
                    or s.get("SubState") != "exited" or s.get("UnitFileState") != "enabled"
                    or dropin not in s.get("DropInPaths", "")):
                bad.append((u, s))
        if bad:
            raise BenchError(f"{what}: {len(bad)}/{len(units)} units not loaded/active/exited/"
                             f"enabled with {dropin}; first: {bad[0]}")

    def verify_gone(self, units, what: str) -> None:
        got = self.show(units, ["LoadState", "ActiveState"])
        bad = [(u, got.get(u)) for u in units
               if got.get(u, {}).get("ActiveState") not in ("inactive", None)
               or got.get(u, {}).get("LoadState") not in ("not-found", None)]
        if bad:
            raise BenchError(f"{what}: {len(bad)} units still present; first: {bad[0]}")
        names = set(units) | {u + ".d" for u in units}
        wants = Path(self.unit_dir) / "multi-user.target.wants"
        leftovers = [f for f in os.listdir(self.unit_dir) if f in names]
        if wants.is_dir():
            leftovers += [f"{wants.name}/{f}" for f in os.listdir(wants) if f in names]
        if leftovers:
            raise BenchError(f"{what}: files left in the unit dir: {leftovers[:5]}")


# ----------------------------------------------------------------------- desired state
class Repo:
    def __init__(self, path: Path):
        self.path = path
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        self.env.update({
            "GIT_AUTHOR_NAME": "core-ops bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
            "GIT_COMMITTER_NAME": "core-ops bench",
            "GIT_COMMITTER_EMAIL": "bench@example.invalid",
            "GIT_AUTHOR_DATE": GIT_DATE, "GIT_COMMITTER_DATE": GIT_DATE,
            "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "LC_ALL": "C",
        })
        path.mkdir(parents=True)
        self.git("init", "-q", "-b", "main")

    def git(self, *args) -> str:
        return run(["git", "-c", "commit.gpgsign=false", *args], cwd=self.path,
                   env=self.env, what="git").stdout.strip()

    def commit(self, n: int, prefix: str, msg: str, changed: int | None = None) -> str:
        """One revision: host `bench` runs services s000..s{n-1}, each one unit + drop-in
        (service `changed`, if given, with the changed drop-in)."""
        for d in ("hosts", "services"):
            shutil.rmtree(self.path / d, ignore_errors=True)
        (self.path / "hosts" / HOST).mkdir(parents=True)
        names = [f"s{i:03d}" for i in range(n)]
        (self.path / "hosts" / HOST / "host.yaml").write_text(
            f"services: [{', '.join(names)}]\n")
        for i, s in enumerate(names):
            write_unit_pair(self.path / "services" / s, unit_name(prefix, i),
                            DROPIN_CHANGED if i == changed else DROPIN_TEXT)
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", msg)
        return self.git("rev-parse", "HEAD")


def unit_name(prefix: str, i: int) -> str:
    return f"{prefix}-b{i:03d}.service"


def write_unit_pair(d: Path, unit: str, dropin: str = None) -> None:
    (d / f"{unit}.d").mkdir(parents=True, exist_ok=True)
    (d / unit).write_text(UNIT_TEXT)
    (d / f"{unit}.d" / "10-bench.conf").write_text(dropin or DROPIN_TEXT)


# ------------------------------------------------------------------------ the bench
class Bench:
    def __init__(self, args, bed: Bed):
        self.args = args
        self.bed = bed
        self.work = bed.dir / "w"
        self.scratch = bed.dir / "scratch"
        for d in ("state", "state-bed", "quadlet", "etc", "srv"):
            (self.work / d).mkdir(parents=True, exist_ok=True)
        self.scratch.mkdir(exist_ok=True)
        self.repo = Repo(bed.dir / "repo")
        self.run_id = secrets.token_hex(2)
        base = {k: v for k, v in os.environ.items()
                if not k.startswith("CORE_OPS_") and k not in ("JOURNAL_STREAM", "RUST_LOG")}
        base.update({
            "CORE_OPS_STATE_DIR": str(self.work / "state"),
            "CORE_OPS_SYSTEMD_UNIT_DIR": bed.unit_dir,
            "CORE_OPS_QUADLET_DIR": str(self.work / "quadlet"),
            "CORE_OPS_HOST_FILE_ROOTS": f"{self.work / 'etc'}:{self.work / 'srv'}",
            "CORE_OPS_JOB_TIMEOUT": "60",
        })
        self.env_nosd = dict(base)
        self.env_sd = dict(base, CORE_OPS_SYSTEMD_ADDRESS=bed.address)

    def env(self, settle: int | None, systemd: bool = True) -> dict:
        e = dict(self.env_sd if systemd else self.env_nosd)
        if settle is not None:
            e["CORE_OPS_SETTLE_MS"] = str(settle)
        return e

    def target(self, rev: str):
        return ["--repo", str(self.repo.path), "--rev", rev, "--host", HOST]

    def apply(self, rev: str, settle: int | None, what: str):
        cmd = [str(BIN), "--json", "apply", *self.target(rev)]
        wall, rss, code, out, err = timed(cmd, self.env(settle), self.scratch)
        try:
            doc = json.loads(out)
        except json.JSONDecodeError:
            doc = None
        if code != 0 or doc is None or doc.get("outcome") != "converged":
            raise BenchError(f"{what}: core-ops apply exit {code}, outcome "
                             f"{doc and doc.get('outcome')}\n--- stdout ---\n{out[-6000:]}\n"
                             f"--- stderr ---\n{err[-4000:]}")
        return wall, rss, doc

    def cleanup_coreops(self, units, tag: str) -> None:
        rev = self.repo.commit(0, "none", f"empty after {tag}")
        self.apply(rev, 0, f"cleanup apply ({tag})")
        self.bed.verify_gone(units, f"cleanup of {tag}")

    # ---------------------------------------------------------------- part 1: plan
    def part_plan(self, n: int = 200):
        prefix = f"cob{self.run_id}p"
        units = [unit_name(prefix, i) for i in range(n)]
        rev = self.repo.commit(n, prefix, f"plan bench, {n} services")
        log(f"plan: applying {n} services to converge first")
        _, _, doc = self.apply(rev, 0, "plan setup apply")
        self.bed.verify_active(units, "10-bench.conf", "plan setup apply")
        rows = []
        variants = [("systemd (bed, D-Bus)", True)]
        if os.path.exists("/run/systemd/system"):
            log("plan: /run/systemd/system exists on this host: no-systemd variant skipped")
        else:
            variants.append(("no systemd (files only)", False))
        for name, sd in variants:
            env = self.env(None, sd)
            # the result must be the no-change plan (and, without systemd, say state unknown)
            wall, rss, code, out, err = timed(
                [str(BIN), "--json", "plan", *self.target(rev)], env, self.scratch)
            if code != 0:
                raise BenchError(f"plan ({name}) exit {code}\n{err[-4000:]}")
            p = json.loads(out)
            summ = p.get("summary", {})
            if set(summ) != {"no_op"} or summ["no_op"] != 2 * n:
                raise BenchError(f"plan ({name}) is not the no-change plan: summary {summ}")
            unknown = any("unit state unknown" in w for w in p.get("warnings", []))
            if unknown == sd:
                raise BenchError(f"plan ({name}): unit-state-unknown warning present={unknown}:"
                                 f" {p.get('warnings')}")
            walls, rsss = [], []
            cmd = [str(BIN), "plan", *self.target(rev)]
            for i in range(self.args.plan_warmup + self.args.plan_runs):
                wall, rss, code, out, err = timed(cmd, env, self.scratch)
                if code != 0:
                    raise BenchError(f"plan ({name}) exit {code}\n--- stderr ---\n{err[-4000:]}")
                if i >= self.args.plan_warmup:
                    walls.append(wall)
                    rsss.append(rss / 1024.0)
            rows.append({"variant": name, "systemd": sd, "n_services": n,
                         "objects": 2 * n, "wall_ms": stats(walls), "max_rss_mib": stats(rsss),
                         "stdout_bytes": len(out), "walls": walls, "rss_mib": rsss})
            log(f"plan: {name}: median {statistics.median(walls):.1f} ms, "
                f"max RSS {max(rsss):.1f} MiB")
        log("plan: cleanup")
        self.cleanup_coreops(units, "plan")
        return rows

    # --------------------------------------------------------------- part 2: anchor
    def in_bed_timed(self, script: str, *args, what: str, env=()):
        """Run a bash script inside the bed that prints `T <ms>` (and optionally `R <KiB>`);
        with `env`, in a clean environment of PATH and those `KEY=value`s. The bench's own
        writes (the desired repo's commit, the floor's staging tree) are synced to disk
        before the script starts its clock: a durable write must not pay for them."""
        clean = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", *env] if env else []
        p = self.bed.exec(*clean, "bash", "-c", "sync; " + script, "bash", *map(str, args),
                          what=what)
        t = [ln.split()[1] for ln in p.stdout.splitlines() if ln.startswith("T ")]
        r = [ln.split()[1] for ln in p.stdout.splitlines() if ln.startswith("R ")]
        if not t:
            raise BenchError(f"{what}: no timing printed\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
        return float(t[-1]), (int(r[-1]) if r else None), p.stdout

    def coreops_in_bed(self, rev: str, settle: int | None, what: str):
        """`core-ops --json apply` INSIDE the bed (its own systemd on the default bus, unit dir
        /etc/systemd/system, as on a real host), timed there with $EPOCHREALTIME like the
        floor; max RSS by GNU time. Returns (wall ms, max RSS KiB, results document)."""
        env = [f"CORE_OPS_STATE_DIR={self.work / 'state-bed'}",
               f"CORE_OPS_QUADLET_DIR={self.work / 'quadlet'}",
               f"CORE_OPS_HOST_FILE_ROOTS={self.work / 'etc'}:{self.work / 'srv'}"]
        if settle is not None:
            env.append(f"CORE_OPS_SETTLE_MS={settle}")
        out = self.scratch / "bed-apply.json"
        rss = self.scratch / "bed-apply.rss"
        script = ('out=$1; rss=$2; shift 2; t0=$EPOCHREALTIME;'
                  ' /usr/bin/time -f %M -o "$rss" "$@"'
                  ' > "$out"; rc=$?; t1=$EPOCHREALTIME;'
                  ' echo "T $(echo "($t1 - $t0) * 1000" | bc -l)"; echo "R $(tail -1 "$rss")";'
                  ' echo "C $rc"')
        wall, kib, stdout = self.in_bed_timed(
            script, out, rss, str(BIN), "--json", "apply", *self.target(rev), what=what,
            env=env)
        try:
            doc = json.loads(out.read_text())
        except (OSError, json.JSONDecodeError):
            doc = None
        if doc is None or doc.get("outcome") != "converged":
            raise BenchError(f"{what}: core-ops apply in the bed did not converge: "
                             f"{json.dumps(doc)[:4000] if doc else stdout[-2000:]}")
        return wall, kib, doc

    def floor_apply(self, stage: Path, units):
        script = ('S=$1; shift; t0=$EPOCHREALTIME; cp -a "$S"/. /etc/systemd/system/ || exit 11;'
                  ' systemctl daemon-reload || exit 12;'
                  ' systemctl enable --no-reload --now "$@" || exit 13;'
                  ' t1=$EPOCHREALTIME; echo "T $(echo "($t1 - $t0) * 1000" | bc -l)"')
        return self.in_bed_timed(script, stage, *units, what="floor apply")[0]

    def floor_change(self, stage: Path, unit: str):
        """The floor of a one-object change: copy the changed drop-in, one daemon-reload, one
        restart."""
        (stage / f"{unit}.d" / "10-bench.conf").write_text(DROPIN_CHANGED)
        script = ('S=$1; U=$2; t0=$EPOCHREALTIME;'
                  ' cp -a "$S/$U.d/10-bench.conf" "/etc/systemd/system/$U.d/" || exit 11;'
                  ' systemctl daemon-reload || exit 12; systemctl restart "$U" || exit 13;'
                  ' t1=$EPOCHREALTIME; echo "T $(echo "($t1 - $t0) * 1000" | bc -l)"')
        return self.in_bed_timed(script, stage, unit, what="floor change")[0]

    def floor_noop(self, stage: Path, units, with_state: bool):
        """The floor of a no-op: one tree walk comparing the desired tree with the unit dir
        (diff -rq, only differing files count), and with unit state one `systemctl list-units`
        of the N units (one ListUnitsByPatterns call); no per-unit calls, no writes."""
        state = (' systemctl list-units --all --plain --no-legend --no-pager "$@" > /dev/null'
                 ' || exit 12;') if with_state else ''
        script = ('S=$1; shift; t0=$EPOCHREALTIME;'
                  ' if diff -rq "$S" /etc/systemd/system | grep -q "^Files "; then exit 11; fi;'
                  f'{state} t1=$EPOCHREALTIME; echo "T $(echo "($t1 - $t0) * 1000" | bc -l)"')
        return self.in_bed_timed(script, stage, *units, what="floor no-op")[0]

    def floor_cleanup(self, prefix: str, units):
        clean = ('systemctl stop "$@" && systemctl disable --no-reload "$@" 2>/dev/null &&'
                 f' rm -rf /etc/systemd/system/{prefix}-* && systemctl daemon-reload &&'
                 ' systemctl reset-failed')
        self.bed.exec("bash", "-c", clean, "bash", *units, what="floor cleanup")
        self.bed.verify_gone(units, f"floor cleanup {prefix}")

    def floor(self, n: int, prefix: str, change: bool):
        units = [unit_name(prefix, i) for i in range(n)]
        stage = self.bed.dir / f"stage-{prefix}"
        for u in units:
            write_unit_pair(stage, u)
        res = {"apply": self.floor_apply(stage, units)}
        self.bed.verify_active(units, "10-bench.conf", f"floor {prefix}")
        if change:
            res["noop"] = self.floor_noop(stage, units, False)
            res["noop_state"] = self.floor_noop(stage, units, True)
            res["change"] = self.floor_change(stage, units[0])
        self.floor_cleanup(prefix, units)
        shutil.rmtree(stage)
        return res

    def coreops(self, n: int, prefix: str, settle: int | None, change: bool):
        units = [unit_name(prefix, i) for i in range(n)]
        rev = self.repo.commit(n, prefix, f"apply bench {prefix}")
        tag = "default" if settle is None else f"settle {settle}"
        wall, rss, doc = self.coreops_in_bed(rev, settle, f"apply {prefix} ({tag})")
        self.bed.verify_active(units, "10-bench.conf", f"core-ops apply {prefix}")
        res = {"apply": self.sample(wall, rss, doc)}
        nwall, nrss, ndoc = self.coreops_in_bed(rev, settle, f"no-op re-run {prefix}")
        self.check_calls(ndoc, 0, 0, f"no-op re-run {prefix}")
        res["noop"] = self.sample(nwall, nrss, ndoc)
        if change:
            rev2 = self.repo.commit(n, prefix, f"change 1 {prefix}", changed=0)
            cwall, crss, cdoc = self.coreops_in_bed(rev2, settle, f"change 1 {prefix}")
            self.check_calls(cdoc, 1, 1, f"change 1 {prefix}")
            res["change"] = self.sample(cwall, crss, cdoc)
        empty = self.repo.commit(0, "none", f"empty after {prefix}")
        self.coreops_in_bed(empty, 0, f"cleanup apply ({prefix})")
        self.bed.verify_gone(units, f"cleanup of {prefix}")
        return res

    @staticmethod
    def sample(wall, rss_kib, doc):
        ph = {x["name"]: x["duration_ms"] for x in doc.get("phases", [])}
        calls = doc.get("calls", {})
        return {"wall": wall, "rss_kib": rss_kib, "reloads": calls.get("reloads"),
                "jobs": calls.get("jobs"), "phases": ph,
                "outside_phases": wall - sum(ph.values()),
                "watched": sum(1 for x in doc.get("settled", []) if x.get("watched"))}

    @staticmethod
    def check_calls(doc, reloads: int, jobs: int, what: str):
        calls = doc.get("calls", {})
        if calls.get("reloads") != reloads or calls.get("jobs") != jobs:
            raise BenchError(f"{what}: expected {reloads} reloads and {jobs} jobs, got {calls}"
                             f"\n{json.dumps(doc)[:3000]}")

    def part_apply(self):
        """The anchor bench: per N, `reps` interleaved repetitions with fresh unit names of the
        floor and of core-ops (inside the bed) with default settings and with
        CORE_OPS_SETTLE_MS=0; at N=200 also the one-object change and the no-op re-run."""
        out = {}
        for n in self.args.sizes:
            runs = {"floor": [], "default": [], "settle0": []}
            change = n == max(self.args.sizes)
            for rep in range(self.args.reps):
                base = f"cob{self.run_id}n{n}r{rep}"
                order = ["floor", "default", "settle0"]
                order = order[rep % 3:] + order[:rep % 3]
                for what in order:
                    if what == "floor":
                        runs["floor"].append(self.floor(n, base + "f", change))
                    else:
                        settle = None if what == "default" else 0
                        runs[what].append(self.coreops(n, base + what[0], settle, change))
                log(f"N={n} rep {rep + 1}/{self.args.reps}: floor {runs['floor'][-1]['apply']:.0f}"
                    f" ms, core-ops default {runs['default'][-1]['apply']['wall']:.0f} ms,"
                    f" settle 0 {runs['settle0'][-1]['apply']['wall']:.0f} ms")
            out[n] = runs
        return out


# ------------------------------------------------------------------------ reporting
def fmt(x, nd=0):
    return "-" if x is None else f"{x:.{nd}f}"


def table(headers, rows, left=("variant", "phase")) -> str:
    """Plain-text table: text columns (named in `left`) left-aligned, numbers right-aligned."""
    w = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]

    def line(r):
        return "  ".join(str(c).ljust(w[i]) if headers[i] in left else str(c).rjust(w[i])
                         for i, c in enumerate(r)).rstrip()
    return "\n".join([line(headers), line(["-" * x for x in w]), *map(line, rows)])


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def anchor_report(apply_res) -> str:
    """The anchor table: medians of the floor and of core-ops (default settings, and
    CORE_OPS_SETTLE_MS=0 as an extra column), ratios against the floor of the same run, the
    goals of issue 17, and a phase split."""
    o = ["Part 2 (anchor): core-ops INSIDE the bed vs the shell floor, wall ms (median of the "
         "repetitions, interleaved, fresh unit names), ratios against the floor of this run"]
    rows, verdict, prow = [], [], []
    rss_all = []
    largest = max(apply_res)
    for n, r in apply_res.items():
        cases = [(f"apply {n} new services", "apply", "apply", 1, n)]
        if n == largest:
            cases.append((f"change 1 of {n}", "change", "change", 1, 1))
            cases.append((f"no-op re-run, {n} services", "noop", "noop_state", 0, 0))
        for name, key, fkey, want_reloads, want_jobs in cases:
            fl = med(x.get(fkey) for x in r["floor"])
            d = [x[key] for x in r["default"]]
            z = [x[key] for x in r["settle0"]]
            dm, zm = med(x["wall"] for x in d), med(x["wall"] for x in z)
            rss = max(x["rss_kib"] for x in d + z) / 1024.0
            rss_all.append(rss)
            reloads = span([x["reloads"] for x in d + z])
            jobs = span([x["jobs"] for x in d + z])
            rows.append([name, f"{fl:.1f}", f"{dm:.1f}", f"{dm / fl:.2f}", f"{zm:.1f}",
                         f"{zm / fl:.2f}", reloads, jobs,
                         span([x["watched"] for x in d]), f"{rss:.1f}"])
            ok_calls = all(x["reloads"] == want_reloads and x["jobs"] == want_jobs
                           for x in d + z)
            if key == "apply":
                ok = dm / fl <= 1.0 and ok_calls
                verdict.append(f"{name}: {dm / fl:.2f}x (goal <= 1.0x, exactly 1 reload): "
                               f"{'PASS' if ok else 'FAIL'}")
            elif key == "change":
                ok = dm / fl <= 1.2 and ok_calls
                verdict.append(f"{name}: {dm / fl:.2f}x (goal <= 1.2x, exactly 1 restart): "
                               f"{'PASS' if ok else 'FAIL'}")
            else:
                bare = med(x.get("noop") for x in r["floor"])
                ok = dm / fl <= 1.5 and dm < 20
                verdict.append(f"{name}: {dm / fl:.2f}x the floor no-op with unit state "
                               f"({dm / bare:.2f}x the bare one, {bare:.1f} ms), {dm:.1f} ms "
                               f"(goal <= 1.5x and < 20 ms): {'PASS' if ok else 'FAIL'}")
            for k in sorted({k for x in d for k in x["phases"]}):
                prow.append([name, f"core-ops: {k}", f"{med(x['phases'].get(k, 0) for x in d):.0f}",
                             f"{med(x['phases'].get(k, 0) for x in z):.0f}"])
            prow.append([name, "core-ops: outside phases (exec, git, render, observe, plan, "
                         "records)", f"{med(x['outside_phases'] for x in d):.0f}",
                         f"{med(x['outside_phases'] for x in z):.0f}"])
    o.append(table(["case", "floor", "default", "/floor", "settle 0", "/floor", "reloads",
                    "jobs", "watched", "max RSS MiB"], rows, left=("case",)))
    o.append("floor: apply = cp -a; systemctl daemon-reload; systemctl enable --no-reload --now;"
             " change = cp of the drop-in; daemon-reload; systemctl restart; no-op = diff -rq of "
             "the desired tree against the unit dir + systemctl list-units of the N units "
             "(one ListUnitsByPatterns call)")
    verdict.append(f"peak RSS {max(rss_all):.1f} MiB (goal < 20 MB): "
                   f"{'PASS' if max(rss_all) < 20 else 'FAIL'}")
    o.append("goals:\n  " + "\n  ".join(verdict))
    o.append("")
    o.append("Part 2 phases, ms (median): the results document's `phases`")
    o.append(table(["case", "phase", "default", "settle 0"], prow, left=("case", "phase")))
    return "\n".join(o)


def report(header: dict, plan_rows, apply_res) -> str:
    o = [f"core-ops bench: {header['core_ops']} | nproc {header['nproc']} | kernel "
         f"{header['kernel']} | {header['systemd']} (test bed) | bed dir {header['bed_dir']} "
         f"({header['bed_dir_fs']}) | load at start {header['loadavg']}, at end "
         f"{header['loadavg_end']}", ""]
    if plan_rows:
        o.append("Part 1: no-change `core-ops plan` of 200 services (400 objects), "
                 f"{plan_rows[0]['wall_ms']['n']} runs after warm-ups")
        rows = []
        for r in plan_rows:
            w, m = r["wall_ms"], r["max_rss_mib"]
            rows.append([r["variant"] + (" *" if r["systemd"] else ""), fmt(w["min"], 1),
                         fmt(w["median"], 1), fmt(w["max"], 1), fmt(m["min"], 1),
                         fmt(m["median"], 1), fmt(m["max"], 1)])
        o.append(table(["variant", "wall ms min", "wall med", "wall max", "RSS MiB min",
                        "RSS med", "RSS max"], rows))
        sd = next((r for r in plan_rows if r["systemd"]), None)
        if sd:
            ok_w = sd["wall_ms"]["median"] < 50
            ok_m = sd["max_rss_mib"]["max"] < 20
            o.append(f"* = the issue's measure (the no-change plan as an operator on the host "
                     f"runs it, with systemd).\n  goal < 50 ms wall (median): "
                     f"{'PASS' if ok_w else 'FAIL'}; < 20 MB (taken as 20 MiB) max RSS (max of runs): "
                     f"{'PASS' if ok_m else 'FAIL'}")
        o.append("")
    if apply_res:
        o.append(anchor_report(apply_res))
    return "\n".join(o)


# ------------------------------------------------------------------------------ main
def build(retries: int) -> None:
    for attempt in range(1, retries + 1):
        log(f"cargo build --release (attempt {attempt})")
        p = subprocess.run(["cargo", "build", "--release"], cwd=ROOT, capture_output=True,
                           text=True)
        if p.returncode == 0 and BIN.exists():
            return
        log(f"build failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
        if attempt < retries:
            log("waiting 60 s (the tree may be mid-edit) and retrying")
            time.sleep(60)
    raise BenchError("cargo build --release failed")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON document, no tables")
    ap.add_argument("--no-build", action="store_true", help="use the existing release binary")
    ap.add_argument("--build-retries", type=int, default=3)
    ap.add_argument("--bed-dir", default="/tmp/cob-bench", help="test bed dir (short, plain)")
    ap.add_argument("--reps", type=int, default=3, help="anchor repetitions per N")
    ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                    default=[50, 200], help="comma-separated N for the apply part")
    ap.add_argument("--plan-runs", type=int, default=15)
    ap.add_argument("--plan-warmup", type=int, default=2)
    ap.add_argument("--only", choices=["plan", "apply"], help="run one part only")
    args = ap.parse_args()
    if os.geteuid() != 0:
        log("must run as root (the systemd test bed needs namespaces and mounts)")
        return 1

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)

    t_start = time.monotonic()
    bed = Bed(Path(args.bed_dir))
    try:
        if not args.no_build:
            build(args.build_retries)
        if not BIN.exists():
            raise BenchError(f"{BIN} missing (run without --no-build)")
        version = run([str(BIN), "--version"]).stdout.strip()
        log(f"booting test bed at {bed.dir}")
        bed.up()
        try:
            sd_version = bed.exec("systemctl", "--version").stdout.splitlines()[0]
            fs = run(["stat", "-f", "-c", "%T", str(bed.dir)]).stdout.strip()
            header = {"core_ops": version, "nproc": os.cpu_count(), "kernel": platform.release(),
                      "bed_dir": str(bed.dir), "bed_dir_fs": fs,
                      "systemd": sd_version,
                      "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg())}
            b = Bench(args, bed)
            plan_rows = b.part_plan() if args.only in (None, "plan") else []
            apply_res = b.part_apply() if args.only in (None, "apply") else {}
        finally:
            log("stopping test bed")
            bed.down()
    except BenchError as e:
        log(f"FAILED: {e}")
        return 1
    except KeyboardInterrupt as e:
        log(f"interrupted ({e})")
        return 130
    header["elapsed_s"] = round(time.monotonic() - t_start, 1)
    header["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if args.json:
        json.dump({"kind": "CoreOpsBench", "header": header, "plan": plan_rows,
                   "apply": {str(k): v for k, v in apply_res.items()}}, sys.stdout, indent=1)
        print()
    else:
        print(report(header, plan_rows, apply_res))
        print(f"\n(elapsed {header['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
