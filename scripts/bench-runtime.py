#!/usr/bin/env python3
"""scripts/bench-runtime.py - benchmark core-ops runtimes against a real systemd (test bed).

Parts (one plain-text table each; --json prints one machine-readable document instead):
  1. lifecycle: with a 100 MiB artifact (incompressible payload + bin/hello, tar.gz, pinned
     sha256, /abs/path source) and one unit that runs current/bin/hello, time `core-ops apply`
     (wall ms) for: install (fresh state dir), update (a second 100 MiB version: fetch, unpack,
     switch), switch (back to the first version, already unpacked: store hit re-hashed, switch,
     restart), rollback (a third version whose unit fails: fetch, unpack, switch, health fails,
     switch back). Per-step ms (fetch, unpack, switch, restart, health, rollback) come from the
     evidence bundle of the transaction's terminal receipt. --reps fresh repetitions.
  2. sha256: the same 100 MiB store object hashed by `sha256sum` and by core-ops' store
     hasher (`core-ops store-hash`, the code a store hit runs), interleaved, page cache warm,
     wall time of each process. Goal: core-ops >= 0.9 x sha256sum.
A header gives nproc, CPU, kernel, sha_ni, systemd (bed), core-ops --version, sha256sum version.

Python 3.11 standard library only. Must run as root (the bed needs namespaces and mounts).
Usage: scripts/bench-runtime.py [--json] [--no-build] [--bed-dir /tmp/cob-bench-rt]
                                [--reps 3] [--hash-runs 7] [--size-mib 100]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "release" / "core-ops"
TESTBED = ROOT / "scripts" / "systemd-testbed.sh"
HOST = "bench"
GIT_DATE = "2024-01-01T00:00:00+0000"
UNIT = "bench-rt-hello.service"
STEPS = ["fetch", "unpack", "switch", "restart", "health", "rollback"]


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"bench-runtime: {msg}", file=sys.stderr, flush=True)


def run(cmd, *, env=None, cwd=None, check=True, what=None) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise BenchError(
            f"{what or cmd[0]} failed (exit {p.returncode}): {' '.join(map(str, cmd))[:300]}\n"
            f"--- stdout ---\n{p.stdout[-4000:]}\n--- stderr ---\n{p.stderr[-4000:]}"
        )
    return p


def stats(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    return {"n": len(xs), "min": min(xs), "median": statistics.median(xs), "max": max(xs)}


def fmt(s, unit="") -> str:
    if not s:
        return "-"
    if s["n"] == 1:
        return f"{s['median']:.0f}{unit}"
    return f"{s['median']:.0f}{unit} ({s['min']:.0f}-{s['max']:.0f})"


# ----------------------------------------------------------------------------- the bed
class Bed:
    def __init__(self, d: Path):
        self.dir = d
        self.info: dict[str, str] = {}

    def up(self) -> None:
        if run([str(TESTBED), "status", str(self.dir)], check=False).returncode == 0:
            raise BenchError(f"a test bed is already running at {self.dir}; stop it with:"
                             f" {TESTBED} down {self.dir}")
        if self.dir.exists():
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

    def exec(self, *args, check=True) -> subprocess.CompletedProcess:
        return run([str(TESTBED), "exec", str(self.dir), *args],
                   env=dict(os.environ, LC_ALL="C"), check=check, what=f"bed: {args[0]}")

    def active(self, unit: str) -> str:
        return self.exec("systemctl", "show", "--value", "-p", "ActiveState", unit,
                         check=False).stdout.strip()


# ----------------------------------------------------------------------- artifacts, repo
def artifact(path: Path, version: str, size: int, good: bool, marker: Path) -> str:
    """Write hello-<version>.tar.gz (payload of `size` random bytes); return sha256:<hex>."""
    script = (f"#!/bin/sh\necho {version} > {marker}\nexec sleep infinity\n" if good
              else "#!/bin/sh\nexit 3\n").encode()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data, mode in (("bin/hello", script, 0o755),
                                 ("share/payload.bin", os.urandom(size), 0o644)):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), mode, 1_700_000_000
            tf.addfile(ti, io.BytesIO(data))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(gzip.compress(raw.getvalue(), compresslevel=1, mtime=0))
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


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

    def commit(self, files: dict[str, str], msg: str) -> str:
        for p in self.path.iterdir():
            if p.name != ".git":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        for rel, text in files.items():
            f = self.path / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(text)
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", msg)
        return self.git("rev-parse", "HEAD")


# ----------------------------------------------------------------------------- the bench
class Bench:
    def __init__(self, args, bed: Bed):
        self.args = args
        self.bed = bed
        self.size = args.size_mib << 20
        self.root = bed.dir / "rt"
        self.dist = self.root / "dist"
        self.marker = self.root / "hello.ran"
        self.versions: dict[str, tuple[Path, str]] = {}

    def make_artifacts(self) -> None:
        for v, good in (("1.0.0", True), ("2.0.0", True), ("3.0.0", False)):
            p = self.dist / f"hello-{v}.tar.gz"
            t0 = time.perf_counter()
            d = artifact(p, v, self.size, good, self.marker)
            log(f"artifact {p.name}: {p.stat().st_size / 2**20:.1f} MiB"
                f" ({(time.perf_counter() - t0):.1f} s to build)")
            self.versions[v] = (p, d)

    def files(self, state: Path, version: str) -> dict[str, str]:
        path, digest = self.versions[version]
        return {
            f"runtimes/hello/{version}.yaml": (
                f"name: hello\nversion: \"{version}\"\npublisher: bench\nartifacts:\n"
                f"  - name: hello-{version}.tar.gz\n    source: {path}\n    digest: {digest}\n"
                f"units: [{UNIT}]\nhealth: {{ timeout: 30s }}\n"),
            f"services/hello/{UNIT}": (
                "[Unit]\nDescription=core-ops runtime bench\n\n[Service]\n"
                f"ExecStart={state}/runtimes/hello/current/bin/hello\n\n"
                "[Install]\nWantedBy=multi-user.target\n"),
            f"hosts/{HOST}/host.yaml": (
                f"services: [hello]\nruntimes: {{ hello: \"{version}\" }}\n"
                "policy:\n  allowed_publishers: [bench]\n"),
        }

    def env(self, state: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("CORE_OPS_") and k != "JOURNAL_STREAM"}
        env.update({
            "CORE_OPS_STATE_DIR": str(state),
            "CORE_OPS_SYSTEMD_UNIT_DIR": self.bed.info["SYSTEMD_TESTBED_UNIT_DIR"],
            "CORE_OPS_QUADLET_DIR": str(self.root / "quadlet"),
            "CORE_OPS_HOST_FILE_ROOTS": str(self.root / "etc"),
            "CORE_OPS_SYSTEMD_ADDRESS": self.bed.info["SYSTEMD_TESTBED_ADDRESS"],
            "CORE_OPS_SETTLE_MS": "1500",
        })
        return env

    def apply(self, repo: Repo, state: Path, version: str, expect_code: int) -> dict:
        rev = repo.commit(self.files(state, version), version)
        t0 = time.perf_counter()
        p = run([str(BIN), "--json", "apply", "--repo", str(repo.path), "--host", HOST,
                 "--rev", rev], env=self.env(state), check=False)
        wall = (time.perf_counter() - t0) * 1000.0
        if p.returncode != expect_code:
            raise BenchError(f"apply {version}: exit {p.returncode}, expected {expect_code}\n"
                             f"{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
        receipts = sorted((state / "receipts").glob("*-runtime-install.json"))
        last = json.loads(receipts[-1].read_text())
        ev = last["evidenceRefs"][0].removeprefix("evidence:")
        tx = json.loads((state / "evidence" / ev / "transaction.json").read_text())
        return {"version": version, "wall_ms": wall, "state": last["installState"],
                "steps": tx.get("timings_ms", {})}

    def part_lifecycle(self) -> dict[str, list[dict]]:
        rows: dict[str, list[dict]] = {"install": [], "update": [], "switch": [], "rollback": []}
        for rep in range(self.args.reps):
            state = self.root / f"state-{rep}"
            repo = Repo(self.root / f"repo-{rep}")
            log(f"rep {rep + 1}/{self.args.reps}: install, update, switch, rollback")
            for kind, version, code, want in (("install", "1.0.0", 0, "installed"),
                                              ("update", "2.0.0", 0, "installed"),
                                              ("switch", "1.0.0", 0, "installed"),
                                              ("rollback", "3.0.0", 3, "rolled_back")):
                r = self.apply(repo, state, version, code)
                if r["state"] != want:
                    raise BenchError(f"{kind}: ended {r['state']}, expected {want}")
                rows[kind].append(r)
            if self.bed.active(UNIT) != "active":
                raise BenchError(f"{UNIT} is not active after the rollback")
            # clean up: leave no unit behind for the next repetition
            rev = repo.commit({f"hosts/{HOST}/host.yaml": "services: []\n"}, "empty")
            run([str(BIN), "apply", "--repo", str(repo.path), "--host", HOST, "--rev", rev],
                env=self.env(state), what="teardown apply")
            shutil.rmtree(state)
        return rows

    def part_sha256(self) -> dict:
        _, digest = self.versions["1.0.0"]
        obj = self.root / "hashme.tar.gz"
        shutil.copyfile(self.versions["1.0.0"][0], obj)
        size = obj.stat().st_size
        subprocess.run(["cat", str(obj)], stdout=subprocess.DEVNULL, check=True)  # warm cache
        ours, theirs, ours_inner = [], [], []
        for _ in range(self.args.hash_runs):
            t0 = time.perf_counter()
            p = run(["sha256sum", str(obj)], what="sha256sum")
            theirs.append((time.perf_counter() - t0) * 1000.0)
            if p.stdout.split()[0] != digest.removeprefix("sha256:"):
                raise BenchError("sha256sum disagrees with the pinned digest")
            t0 = time.perf_counter()
            p = run([str(BIN), "store-hash", str(obj)], what="core-ops store-hash")
            ours.append((time.perf_counter() - t0) * 1000.0)
            doc = json.loads(p.stdout)
            if doc["digest"] != digest:
                raise BenchError("core-ops store-hash disagrees with the pinned digest")
            ours_inner.append(doc["ms"])
        mib = size / 2**20
        med_ours, med_theirs = statistics.median(ours), statistics.median(theirs)
        return {"bytes": size, "sha256sum_ms": stats(theirs), "core_ops_ms": stats(ours),
                "core_ops_hash_only_ms": stats(ours_inner),
                "sha256sum_mib_s": mib / (med_theirs / 1000.0),
                "core_ops_mib_s": mib / (med_ours / 1000.0),
                "ratio": med_theirs / med_ours}


def report(header: dict, life: dict, sha: dict) -> str:
    out = ["core-ops runtime benchmark"]
    for k, v in header.items():
        out.append(f"  {k:<12} {v}")
    out.append("")
    out.append(f"1. lifecycle of a {header['artifact_mib']} MiB artifact (core-ops apply, wall ms;"
               f" steps from the evidence bundle; median (min-max) of {header['reps']})")
    cols = ["apply wall"] + STEPS
    out.append(f"  {'':<9}" + "".join(f"{c:>20}" for c in cols))
    for kind, rows in life.items():
        cells = [fmt(stats([r["wall_ms"] for r in rows]))]
        for s in STEPS:
            cells.append(fmt(stats([r["steps"].get(s) for r in rows])))
        out.append(f"  {kind:<9}" + "".join(f"{c:>20}" for c in cells))
    out.append("")
    out.append(f"2. sha256 of the same {sha['bytes'] / 2**20:.1f} MiB file, page cache warm"
               f" (process wall ms, median (min-max) of {header['hash_runs']})")
    out.append(f"  {'sha256sum':<28}{fmt(sha['sha256sum_ms']):>22}"
               f"{sha['sha256sum_mib_s']:>12.0f} MiB/s")
    out.append(f"  {'core-ops store-hash':<28}{fmt(sha['core_ops_ms']):>22}"
               f"{sha['core_ops_mib_s']:>12.0f} MiB/s")
    out.append(f"  {'  (hashing only, in-process)':<28}{fmt(sha['core_ops_hash_only_ms']):>22}")
    verdict = "meets" if sha["ratio"] >= 0.9 else "MISSES"
    out.append(f"  core-ops / sha256sum throughput: {sha['ratio']:.2f} x ({verdict} the 0.9 x goal)")
    return "\n".join(out)


def build(retries: int) -> None:
    for attempt in range(1, retries + 1):
        log(f"cargo build --release (attempt {attempt})")
        p = subprocess.run(["cargo", "build", "--release"], cwd=ROOT, capture_output=True,
                           text=True)
        if p.returncode == 0 and BIN.exists():
            return
        log(f"build failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
        if attempt < retries:
            time.sleep(60)
    raise BenchError("cargo build --release failed")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON document, no tables")
    ap.add_argument("--no-build", action="store_true", help="use the existing release binary")
    ap.add_argument("--build-retries", type=int, default=3)
    ap.add_argument("--bed-dir", default="/tmp/cob-bench-rt", help="test bed dir (short, plain)")
    ap.add_argument("--reps", type=int, default=3, help="fresh lifecycle repetitions")
    ap.add_argument("--hash-runs", type=int, default=7, help="sha256 runs per tool")
    ap.add_argument("--size-mib", type=int, default=100, help="artifact payload size")
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
        log(f"booting test bed at {bed.dir}")
        bed.up()
        try:
            b = Bench(args, bed)
            b.make_artifacts()
            header = {
                "core_ops": run([str(BIN), "--version"]).stdout.strip(),
                "nproc": os.cpu_count(), "cpu": cpu_model(),
                "sha_ni": "sha_ni" in Path("/proc/cpuinfo").read_text(),
                "kernel": platform.release(),
                "systemd": bed.exec("systemctl", "--version").stdout.splitlines()[0],
                "sha256sum": run(["sha256sum", "--version"]).stdout.splitlines()[0],
                "fs": run(["stat", "-f", "-c", "%T", str(bed.dir)]).stdout.strip(),
                "artifact_mib": args.size_mib, "reps": args.reps, "hash_runs": args.hash_runs,
            }
            life = b.part_lifecycle()
            sha = b.part_sha256()
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
    if args.json:
        json.dump({"kind": "CoreOpsRuntimeBench", "header": header, "lifecycle": life,
                   "sha256": sha}, sys.stdout, indent=1)
        print()
    else:
        print(report(header, life, sha))
        print(f"\n(elapsed {header['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
