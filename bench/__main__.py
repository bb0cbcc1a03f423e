"""`make bench`: geoetl against the tools a user would otherwise pick, on the same database, in one run.

    .venv/bin/python -m bench [--scale 1] [--runs 3] [--only all|orchestration|ingest|memory]
                              [--datasets gpkg,csv,geojson,shp,parquet,maritime] [--profile missed|always|never]
                              [--api-port P --blob-port P --database NAME]
                              [--out BENCHMARKS.md] [--json bench/results/latest.json]

`--api-port`, `--blob-port`, `--database` run the benchmark against a stack of its own (started in
.run/bench-<api>-<blob>/ if it is not running), never the one `make up` started. After the timed runs
of a file whose geoetl median misses an issue-13 target, one more geoetl run is profiled with py-spy
(not one of the timed runs) so the report can say where the time goes.

Results of sections not run this time are kept from the existing JSON, so `--only memory --scale 10`
adds the 10M-polygon memory check to a report without re-running the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench import data, pg, report
from bench.peers import PEER_LABELS, PEERS, drop_peer_table, peer_available, run_peer, runs_on

ROOT = Path(__file__).resolve().parent.parent
CONTENDERS = (*PEERS, "geoetl")
SECTIONS = ("orchestration", "ingest", "memory")
ALL_DATASETS = (*data.BASE_ROWS, data.HEAVY)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=1.0, help="1 = 1M polygons, 1M points, 200k GeoJSON; 0.01 is quick")
    p.add_argument("--runs", type=int, default=3, help="runs per contender (the median is quoted)")
    p.add_argument("--only", choices=("orchestration", "ingest", "memory", "all"), default="all",
                   help="all = orchestration + ingest; memory = one geoetl ingest of the GeoPackage at --scale")
    p.add_argument("--datasets", default=",".join(ALL_DATASETS),
                   help="comma-separated subset of " + ",".join(ALL_DATASETS)
                   + f" ({data.HEAVY}: the corpus's countries-maritime-10m, the same file at every scale)")
    p.add_argument("--profile", choices=("missed", "always", "never"), default="missed",
                   help="one extra py-spy-profiled geoetl run per file: when a target is missed (default), always,"
                   " never")
    p.add_argument("--api-port", type=int, help="API port of the benchmark's own stack (default: the settings')")
    p.add_argument("--blob-port", type=int, help="blob emulator port of the benchmark's own stack")
    p.add_argument("--database", help="database of the benchmark's own stack (same server as DATABASE_URL)")
    p.add_argument("--contenders", default=",".join(CONTENDERS),
                   help="comma-separated subset of " + ",".join(CONTENDERS))
    p.add_argument("--n", type=int, default=1000, help="hello_world tasks")
    p.add_argument("--seed", type=int, default=data.DEFAULT_SEED)
    p.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    p.add_argument("--render-only", action="store_true", help="rewrite --out from --json without measuring")
    args = p.parse_args(argv)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    for d in args.datasets:
        if d not in ALL_DATASETS:
            p.error(f"unknown dataset {d!r}")
    for c in args.contenders:
        if c not in CONTENDERS:
            p.error(f"unknown contender {c!r}")
    if args.scale <= 0 or args.runs < 1:
        p.error("--scale must be > 0 and --runs >= 1")
    return args


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def checkpoint() -> None:
    """Flush the previous load's dirty pages so the next contender does not pay for them."""
    with pg.connect() as conn:
        conn.execute("CHECKPOINT")


def prepare_dataset(kind: str, scale: float, seed: int) -> tuple[data.Dataset, float | None]:
    if kind == data.HEAVY:
        ds = data.heavy_dataset()
        say(f"{kind}: {ds.rows:,} features, {ds.size_bytes / 1e6:.1f} MB at {ds.path} (the corpus's, not scaled)")
        return ds, None
    path = data.cached_path(kind, data.rows_for(kind, scale), seed)
    cached = path.exists()
    t0 = time.perf_counter()
    ds = data.ensure_dataset(kind, scale, seed)
    generated = None if cached else round(time.perf_counter() - t0, 2)
    say(f"{kind}: {ds.rows:,} rows, {ds.size_bytes / 1e6:.1f} MB at {ds.path.relative_to(ROOT)}"
        + (f" (generated in {generated:.1f} s)" if generated else " (cached)"))
    return ds, generated


def run_orchestration(args: argparse.Namespace, env: dict[str, Any]) -> dict[str, Any]:
    from bench.orchestration import run_hello_world, run_idle_latency

    runs: list[dict[str, Any]] = []
    for i in range(args.runs):
        try:
            r = run_hello_world(args.n)
            say(f"hello_world n={args.n} run {i + 1}: {r['tasks_per_s']} tasks/s, dispatch p50 {r['dispatch_p50_ms']}"
                f" ms p95 {r['dispatch_p95_ms']} ms")
        except Exception as exc:  # noqa: BLE001 - record the failure, keep measuring
            r = {"error": str(exc)}
            say(f"hello_world run {i + 1} failed: {exc}")
        runs.append(r)
    try:
        idle = run_idle_latency()
        say(f"idle dispatch latency p50 {idle['p50_ms']} ms p95 {idle['p95_ms']} ms")
    except Exception as exc:  # noqa: BLE001
        idle = {"error": str(exc)}
    return {"env": env, "n": args.n, "runs": runs, "idle": idle}


def run_ingest(args: argparse.Namespace, env: dict[str, Any]) -> dict[str, Any]:
    from bench import geoetl_run

    out: dict[str, Any] = {"env": env, "scale": args.scale, "seed": args.seed, "runs": args.runs, "datasets": {}}
    timeout = 900 + 900 * args.scale
    for kind in args.datasets:
        ds, generated = prepare_dataset(kind, args.scale, args.seed)
        d: dict[str, Any] = {"rows": ds.rows, "file": ds.path.name, "file_mb": round(ds.size_bytes / 1e6, 1),
                             "generate_s": generated, "upload_s": [], "runs": [], "skipped": {}}
        out["datasets"][kind] = d
        contenders = []
        for c in [c for c in args.contenders if c in ("geoetl", *PEERS) and runs_on(c, ds)]:
            why = peer_available(c, ds) if c in PEERS else None
            if why:
                d["skipped"][c] = why
                say(f"{kind}: {PEER_LABELS[c]} skipped: {why}")
            else:
                contenders.append(c)
        blob = None
        if "geoetl" in contenders:
            blob, up = geoetl_run.upload(ds)
            d["upload_s"].append(round(up, 3))
            say(f"{kind}: uploaded to blob storage in {up:.2f} s")
        for run in range(args.runs):
            k = run % len(contenders) if contenders else 0
            for c in contenders[k:] + contenders[:k]:  # rotate the order between runs
                checkpoint()
                table = geoetl_run.unique_table(f"bench_{kind}")
                if c == "geoetl":
                    assert blob is not None
                    r = geoetl_run.run_geoetl(ds, blob, table, timeout=timeout)
                else:
                    r = run_peer(c, ds, table)
                    drop_peer_table(table)
                r["run"] = run + 1
                d["runs"].append(r)
                rss = r.get("worker_peak_rss_mb") if c == "geoetl" else (r.get("peak_rss_mb") or {}).get("client")
                say(f"{kind} run {run + 1} {PEER_LABELS[c]}: "
                    + (f"FAILED {str(r['error'])[:300]}" if r.get("error") else f"{r['seconds']:.2f} s, peak {rss} MB"))
        if blob is not None and args.profile != "never":
            missed = report.missed_targets(kind, report.summarise_ingest({"datasets": {kind: d}})[kind])
            if missed or args.profile == "always":
                say(f"{kind}: " + (f"missed {'; '.join(missed)}: " if missed else "")
                    + "one more geoetl run under py-spy")
                checkpoint()
                r = geoetl_run.run_geoetl(ds, blob, geoetl_run.unique_table(f"bench_{kind}"), timeout=timeout,
                                          profile=True)
                r["missed"] = missed
                d["profile_run"] = r
                prof = r.get("profile") or {}
                say(f"{kind} profile: {prof.get('samples', 0)} samples"
                    + (f", errors {prof['errors']}" if prof.get("errors") else ""))
    return out


def run_memory(args: argparse.Namespace, env: dict[str, Any]) -> dict[str, Any]:
    from bench import geoetl_run

    ds, generated = prepare_dataset("gpkg", args.scale, args.seed)
    blob, up = geoetl_run.upload(ds)
    say(f"gpkg: uploaded to blob storage in {up:.2f} s; ingesting once through geoetl")
    checkpoint()
    r = geoetl_run.run_geoetl(ds, blob, geoetl_run.unique_table("bench_mem"), timeout=1800 + 900 * args.scale)
    say("memory run: " + (f"FAILED {r['error']}" if r.get("error") else
                          f"{r['seconds']:.1f} s, worker peak {r['worker_peak_rss_mb']} MB, all {r['peak_rss_mb']}"))
    return {"env": env, "scale": args.scale, "rows": ds.rows, "file_mb": round(ds.size_bytes / 1e6, 1),
            "generate_s": generated, "upload_s": round(up, 3), "run": r}


def render(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Rewrite the report, keeping the people-written history section of the existing one and the sections
    other commands wrote (the serving benchmark's)."""
    existing = args.out.read_text() if args.out.exists() else ""
    write_atomic(args.out, report.with_kept(report.render(results, report.extract_history(existing)), existing))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render_only:
        render(args, load_json(args.json))
        say(f"wrote {args.out} from {args.json}")
        return 0
    from bench import environment, geoetl_run

    own = geoetl_run.isolate(args.api_port, args.blob_port, args.database)
    if own:
        say(f"own stack: API port {own['API_PORT']}, blob port {own['BLOB_PORT']}, run folder {own['GEOETL_RUN_DIR']}"
            + (f", database {args.database}" if args.database else ""))
    say("making sure the local stack is up (scripts/stack.sh up)")
    geoetl_run.ensure_stack()
    env = environment.collect()
    say(f"{env['machine']['cpu_model']}, {env['machine']['cores']} cores, load {env['machine']['loadavg']}")
    results = load_json(args.json)
    results.setdefault("sections", {})
    if args.only in ("orchestration", "all"):
        results["sections"]["orchestration"] = run_orchestration(args, env)
    if args.only in ("ingest", "all"):
        results["sections"]["ingest"] = run_ingest(args, env)
    if args.only == "memory":
        results["sections"].setdefault("memory", {})[f"{args.scale:g}"] = run_memory(args, env)
    results["environment"] = env
    results["schema"] = 1
    write_atomic(args.json, json.dumps(results, indent=1, sort_keys=True) + "\n")
    render(args, results)
    say(f"wrote {args.out} and {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
