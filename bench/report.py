"""BENCHMARKS.md from the raw results: pure functions, so the rendering is testable without a stack.

The "History" section is written by people (what each change bought) and survives every
re-render; everything else is regenerated from the JSON of raw runs.
"""

from __future__ import annotations

import statistics
from typing import Any

from bench.data import BASE_ROWS, HEAVY
from bench.peers import PEER_LABELS

HISTORY_HEADING = "## History: what each change bought"
DEFAULT_HISTORY = (
    "One entry per optimisation: the change (commit), what it bought in the numbers above, and at\n"
    "which scale it was measured. This section is kept as it is when `make bench` rewrites the file.\n"
)
ORDER = ("ogr2ogr_default", "ogr2ogr_tuned", "ogr2ogr_makevalid", "geopandas", "geoetl")
DATASET_ORDER = ("gpkg", "csv", "geojson", "shp", "parquet", HEAVY)
DATASET_LABEL = {"gpkg": "GeoPackage", "csv": "CSV", "geojson": "GeoJSON", "shp": "Shapefile",
                 "parquet": "GeoParquet", HEAVY: "heavy real polygons (countries-maritime-10m)"}
BASELINE = "ogr2ogr_tuned"
TARGET_RATIO = 1.0
TARGET_WORKER_MB = 400.0
TARGET_TASKS_PER_S = 500.0
# Issue 13: geoetl end to end / tuned ogr2ogr on the same file (the heavy file: ogr2ogr without repair,
# geoetl repairing), and the worker bound on every file.
TARGETS_13 = {"gpkg": 0.7, "csv": 1.0, "geojson": 1.0, "shp": 1.0, "parquet": 1.0, HEAVY: 2.0}
PROFILE_SHOWN = 5


def extract_history(markdown: str | None) -> str:
    """The body of the history section of an existing report ('' when there is none)."""
    if not markdown:
        return ""
    lines = markdown.splitlines()
    for i, line in enumerate(lines):
        if line.strip().lower().startswith("## history"):
            body: list[str] = []
            for nxt in lines[i + 1:]:
                if nxt.startswith("## "):
                    break
                body.append(nxt)
            return "\n".join(body).strip("\n") + "\n"
    return ""


# sections other commands write into the same report (python -m bench.serving): carried over as they are
KEPT_SECTIONS = ("## Serving",)


def kept_sections(markdown: str | None) -> str:
    """The sections of an existing report that this renderer does not write, whole ('' when none)."""
    out: list[str] = []
    keeping = False
    for line in (markdown or "").splitlines():
        if line.startswith("## "):
            keeping = line.startswith(KEPT_SECTIONS)
        if keeping:
            out.append(line)
    return "\n".join(out).strip("\n") + "\n" if out else ""


def with_kept(report: str, markdown: str | None) -> str:
    """A freshly rendered report followed by the existing one's kept sections."""
    kept = kept_sections(markdown)
    return report.rstrip("\n") + "\n\n" + kept if kept else report


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _fmt(v: Any, digits: int = 1, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}{unit}"
    return f"{v}{unit}"


def _rows(n: int | None) -> str:
    if not n:
        return "-"
    if n >= 1_000_000 and n % 100_000 == 0:
        return f"{n / 1_000_000:g}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return f"{n:,}"


def summarise_ingest(ingest: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """dataset -> contender -> median seconds, runs, ratio to the tuned ogr2ogr, peak RSS, errors."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    datasets = ingest.get("datasets") or {}
    for kind in sorted(datasets, key=lambda k: (*DATASET_ORDER, k).index(k)):
        d = datasets[kind]
        per: dict[str, dict[str, Any]] = {}
        for peer in ORDER:
            runs = [r for r in d.get("runs", []) if r.get("peer") == peer]
            ok = [r for r in runs if not r.get("error") and r.get("seconds") is not None]
            if not runs and peer not in (d.get("skipped") or {}):
                continue
            rss = [r.get("worker_peak_rss_mb") if peer == "geoetl" else (r.get("peak_rss_mb") or {}).get("client")
                   for r in ok]
            rss = [v for v in rss if v is not None]
            per[peer] = {
                "median_s": median([r["seconds"] for r in ok]),
                "runs_s": [r["seconds"] for r in ok],
                "failed": len(runs) - len(ok),
                # one line each (a traceback's last lines say the most), so the markdown list stays a list
                "errors": sorted({" ".join(str(r.get("error")).split())[-300:] for r in runs if r.get("error")}),
                "peak_rss_mb": max(rss) if rss else None,
                "skipped": (d.get("skipped") or {}).get(peer),
                "cpu": _median_run_cpu(ok),
            }
            if peer == "geoetl":
                procs: dict[str, float] = {}
                for r in ok:
                    for name, mb in (r.get("peak_rss_mb") or {}).items():
                        procs[name] = max(procs.get(name, 0.0), mb)
                per[peer]["process_peaks_mb"] = procs
                base = [v for r in ok for n, v in (r.get("baseline_rss_mb") or {}).items() if n.startswith("worker")]
                per[peer]["worker_baseline_mb"] = min(base) if base else None
                stages: dict[str, list[float]] = {}
                for r in ok:
                    for name, sec in (r.get("seconds_per_stage") or {}).items():
                        if sec is not None:
                            stages.setdefault(name, []).append(sec)
                known = ["prepare_chunks", "upload_chunks", "create_stac_record"]
                per[peer]["stage_median_s"] = {n: median(stages[n]) for n in
                                               sorted(stages, key=lambda n: (*known, n).index(n))}
                per[peer]["chunks"] = next((r.get("chunks") for r in ok if r.get("chunks")), None)
                repaired = [r["features_repaired"] for r in ok if r.get("features_repaired") is not None]
                per[peer]["features_repaired"] = max(repaired) if repaired else None
                per[peer]["api_peak_rss_mb"] = procs.get("api")
                per[peer]["server_median_s"] = median([r["server_seconds"] for r in ok if r.get("server_seconds")])
        base = (per.get(BASELINE) or {}).get("median_s")
        for v in per.values():
            v["ratio"] = round(v["median_s"] / base, 2) if base and v.get("median_s") else None
        out[kind] = per
    return out


def _median_run_cpu(ok: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The CPU meter of the run whose time is the median (the closest one), when runs were metered."""
    metered = [r for r in ok if r.get("cpu")]
    if not metered:
        return None
    mid = median([r["seconds"] for r in metered])
    return min(metered, key=lambda r: abs(r["seconds"] - mid))["cpu"]


CPU_GROUPS = (("workers", "workers"), ("postgres", "PostgreSQL"), ("azurite", "Azurite"), ("api", "API"),
              ("other", "other"))


def _cpu_cells(cpu: dict[str, Any]) -> str:
    per = cpu.get("cpu_s") or {}
    return " | ".join(_fmt(per.get(k), 2) if k in per else "-" for k, _ in CPU_GROUPS)


def _cpu_section(summary: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Where the cores went in each contender's median run, and the shortest time that much work allows."""
    rows = []
    for kind, per in summary.items():
        base = (per.get(BASELINE) or {}).get("median_s")
        for peer, s in per.items():
            cpu = s.get("cpu")
            if not cpu or not cpu.get("wall_s"):
                continue
            floor = cpu["busy_s"] / cpu["cores"]
            rows.append(f"| {kind} | {PEER_LABELS.get(peer, peer)} | {cpu['wall_s']:.2f} | {cpu['busy_s']:.2f} |"
                        f" {_fmt((cpu.get('use') or 0) * 100, 0)} % | {_cpu_cells(cpu)} | {floor:.2f} |"
                        f" {_fmt(floor / base if base else None, 2, 'x')} |")
    if not rows:
        return []
    lines = [
        "## Where the cores go: CPU seconds of each median run",
        "",
        "CPU seconds (user + system) each group of processes spent during the run, from /proc: geoetl's two"
        " workers with their children, PostgreSQL (every backend, the server's own processes included), the"
        " blob emulator, the API; \"other\" is the rest of the machine's busy time (for (a)-(c) mostly the"
        " peer's client). Use = busy time / (wall time x cores). Floor = busy CPU seconds / cores: the"
        " shortest wall time any scheduling of that much work could reach on this machine; floor x (b) sets"
        " it against the median of (b).",
        "",
        "| dataset | contender | wall s | busy CPU s | use | workers | PostgreSQL | Azurite | API | other |"
        " floor s | floor x (b) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
    ]
    return lines


def _cpu_phases(cpu: dict[str, Any] | None) -> list[str]:
    """One line per stage of a metered geoetl run: wall, busy CPU, use of the cores, and who used them."""
    out = []
    for ph in (cpu or {}).get("phases") or []:
        per = ", ".join(f"{label} {ph['cpu_s'][k]:.2f}" for k, label in CPU_GROUPS
                        if ph["cpu_s"].get(k, 0) >= 0.01)
        out.append(f"  - {ph['phase']}: {ph['wall_s']:.2f} s wall, {ph['busy_s']:.2f} CPU s"
                   f" ({_fmt((ph.get('use') or 0) * 100, 0)} % of the cores): {per}")
    return out


def baseline_notes(ingest: dict[str, Any]) -> dict[str, str]:
    """dataset -> why its ogr2ogr peers loaded another file (GeoParquet without a GDAL Parquet driver)."""
    out = {}
    for kind, d in (ingest.get("datasets") or {}).items():
        for r in d.get("runs", []):
            src = r.get("source")
            if r.get("peer") == BASELINE and src:
                out[kind] = f"{src['why']} ({src['file']}); the x (b) ratios of this file are against that load"
    return out


def _at_scale(kind: str, rows: int | None) -> str:
    """' (at 10k rows, not the 1M file)' when a target meant for the full file was measured on a smaller one."""
    full = BASE_ROWS.get(kind)
    return "" if full is None or rows == full else f" (at {_rows(rows)} rows, not the {_rows(full)} file)"


def missed_targets(kind: str, per: dict[str, dict[str, Any]]) -> list[str]:
    """The issue-13 targets geoetl's median misses on one file, in words ([] when met or not measured)."""
    g = per.get("geoetl") or {}
    out = []
    limit = TARGETS_13.get(kind)
    if limit is not None and g.get("ratio") is not None and g["ratio"] > limit:
        out.append(f"end to end {g['ratio']:.2f}x > {limit:.1f}x tuned ogr2ogr")
    if g.get("peak_rss_mb") is not None and g["peak_rss_mb"] > TARGET_WORKER_MB:
        out.append(f"worker peak {g['peak_rss_mb']:.0f} MB > {TARGET_WORKER_MB:.0f} MB")
    return out


def _when(section: dict[str, Any]) -> str:
    """'<date>, geoetl <rev>': every number is tied to the code it measured."""
    env = section.get("env") or {}
    return f"{env.get('date', '?')}, geoetl {(env.get('versions') or {}).get('geoetl', '?')}"


def _machine_table(env: dict[str, Any]) -> list[str]:
    m, v = env.get("machine", {}), env.get("versions", {})
    rows = [
        ("date", env.get("date")),
        ("machine", m.get("platform")),
        ("CPU", f"{m.get('cpu_model')} — {m.get('cores')} cores"),
        ("memory", f"{m.get('ram_gb')} GB"),
        ("load average at start", m.get("loadavg")),
        ("GDAL (ogr2ogr)", v.get("ogr2ogr")),
        ("GDAL (pyogrio wheel)", v.get("pyogrio_gdal")),
        ("PostgreSQL / PostGIS", f"{v.get('postgresql')} / {v.get('postgis')}"),
        ("Python", v.get("python")),
        ("geopandas / pyogrio / shapely / SQLAlchemy", v.get("python_libs")),
        ("geoetl", v.get("geoetl")),
    ]
    return ["| | |", "| --- | --- |", *[f"| {k} | {val if val is not None else '-'} |" for k, val in rows]]


def _ingest_section(ingest: dict[str, Any], summary: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    runs = ingest.get("runs")
    lines = [
        f"## Ingest: median of {runs} runs (scale {ingest.get('scale', 0):g}, seed {ingest.get('seed')})",
        "",
        f"Measured {_when(ingest)}. Seconds from start to a loaded table with a spatial index;"
        " ratio = median / median of (b). Peak RSS is the client process tree for (a)-(c) and the largest"
        " single worker for (d) (every geoetl process is listed under the table).",
        "",
        "| dataset | rows | file MB | contender | median s | x (b) | runs (s) | peak RSS MB |",
        "| --- | ---: | ---: | --- | ---: | ---: | --- | ---: |",
    ]
    for kind, per in summary.items():
        d = ingest["datasets"][kind]
        for peer, s in per.items():
            label = PEER_LABELS.get(peer, peer)
            if s.get("skipped"):
                lines.append(f"| {kind} | {_rows(d.get('rows'))} | {_fmt(d.get('file_mb'))} | {label} |"
                             f" skipped | | {s['skipped']} | |")
                continue
            runs_s = ", ".join(f"{x:.2f}" for x in s["runs_s"]) + (f" ({s['failed']} failed)" if s["failed"] else "")
            lines.append(
                f"| {kind} | {_rows(d.get('rows'))} | {_fmt(d.get('file_mb'))} | {label} | {_fmt(s['median_s'], 2)} |"
                f" {_fmt(s['ratio'], 2, 'x')} | {runs_s} | {_fmt(s['peak_rss_mb'], 0)} |"
            )
    uploads = [f"{k} {median(ingest['datasets'][k].get('upload_s') or []) or 0:.2f} s" for k in summary]
    lines += ["", f"Upload to blob storage for (d), timed separately and not in the table: {', '.join(uploads)}."]
    for kind, note in baseline_notes(ingest).items():
        lines += ["", f"{DATASET_LABEL.get(kind, kind)} ({kind}): {note}."]
    g = (summary.get(HEAVY) or {}).get("geoetl") or {}
    if g.get("features_repaired") is not None:
        lines += ["", f"{DATASET_LABEL[HEAVY]}: geoetl repaired {g['features_repaired']} invalid features (its default,"
                      " `geometry_params.invalid` \"repair\"); (b) loads them as they are, (b') repairs them with"
                      " GDAL's `-makevalid`."]
    peaks, bases = [], []
    for kind, per in summary.items():
        g = per.get("geoetl") or {}
        if g.get("process_peaks_mb"):
            peaks.append(f"{kind}: " + ", ".join(f"{n} {mb:.0f}" for n, mb in sorted(g["process_peaks_mb"].items())))
        if g.get("worker_baseline_mb") is not None:
            bases.append(g["worker_baseline_mb"])
    breakdown = []
    for kind, per in summary.items():
        g = per.get("geoetl") or {}
        if g.get("stage_median_s"):
            st = ", ".join(f"{n} {v:.2f}" for n, v in g["stage_median_s"].items() if v is not None)
            breakdown.append(f"{kind}: {st} (job in the database {_fmt(g.get('server_median_s'), 2)} s,"
                             f" {g.get('chunks')} chunks)")
    if breakdown:
        lines += ["", "Where geoetl's time goes (median seconds per stage): " + "; ".join(breakdown) + "."]
    if peaks:
        idle = f" When a run started (before its job), the smallest worker held {min(bases):.0f} MB." if bases else ""
        lines += ["", "Peak RSS (MB) of every geoetl process during its runs (max over runs): " + "; ".join(peaks)
                  + "." + idle]
    errors = [(k, p, e) for k, per in summary.items() for p, s in per.items() for e in s.get("errors", [])]
    if errors:
        lines += ["", "Failed runs:", ""]
        lines += [f"- {k} {PEER_LABELS.get(p, p)}: `{e}`" for k, p, e in errors]
    return lines


def _orchestration_section(orch: dict[str, Any]) -> list[str]:
    runs = [r for r in orch.get("runs", []) if not r.get("error")]
    med = {k: median([r[k] for r in runs if r.get(k) is not None])
           for k in ("tasks_per_s", "dispatch_p50_ms", "dispatch_p95_ms", "server_s", "worker_peak_rss_mb")}
    lines = [
        f"## Orchestration: hello_world n={orch.get('n')}, median of {len(runs)} runs",
        "",
        f"Measured {_when(orch)}. Tasks/s = n / (job completed_at - created_at), both set by"
        " the database; dispatch latency = task started_at - created_at (enqueue to task start), over the n"
        " stage-1 tasks of each run. All n tasks are enqueued at once, so the latency is mostly time spent"
        " waiting behind the tasks ahead of it: p50 is roughly half the stage's duration.",
        "",
        "| metric | median | runs |",
        "| --- | ---: | --- |",
    ]
    for key, label, digits in (("tasks_per_s", "tasks/s end to end", 0), ("server_s", "job duration (s)", 2),
                               ("dispatch_p50_ms", "dispatch latency p50 (ms)", 0),
                               ("dispatch_p95_ms", "dispatch latency p95 (ms)", 0),
                               ("worker_peak_rss_mb", "worker peak RSS (MB)", 0)):
        vals = ", ".join(_fmt(r.get(key), digits) for r in runs)
        lines.append(f"| {label} | {_fmt(med[key], digits)} | {vals} |")
    idle = orch.get("idle") or {}
    if idle.get("latencies_ms"):
        lines += ["", f"Idle dispatch latency (n=1 jobs one after another, {len(idle['latencies_ms'])} samples,"
                      f" workers waiting on LISTEN/NOTIFY): p50 {_fmt(idle.get('p50_ms'), 1)} ms,"
                      f" p95 {_fmt(idle.get('p95_ms'), 1)} ms."]
    errors = [r["error"] for r in orch.get("runs", []) if r.get("error")]
    lines += [f"- failed run: `{e}`" for e in errors]
    return lines


def _memory_rows(sections: dict[str, Any], summary: dict[str, Any]) -> list[tuple[str, int, float | None, Any, str]]:
    """(source, rows, worker peak MB, api peak MB, when) for every GeoPackage geoetl ingested."""
    out = []
    ingest = sections.get("ingest") or {}
    g = (summary.get("gpkg") or {}).get("geoetl")
    if g and g.get("peak_rss_mb") is not None:
        out.append(("ingest runs (max over runs)", ingest["datasets"]["gpkg"]["rows"], g["peak_rss_mb"],
                    g.get("api_peak_rss_mb"), _when(ingest)))
    for _scale, m in sorted((sections.get("memory") or {}).items(), key=lambda kv: float(kv[0])):
        r = m.get("run") or {}
        out.append(("memory run (once)", m.get("rows"), r.get("worker_peak_rss_mb"),
                    (r.get("peak_rss_mb") or {}).get("api"),
                    _when(m) + (f" - failed: {r['error'][:200]}" if r.get("error") else "")))
    return out


def _memory_section(sections: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    rows = _memory_rows(sections, summary)
    lines = [
        "## Memory bound: worker peak RSS by file size",
        "",
        "Largest resident set of any one worker process (with its children) while the job ran, sampled every"
        f" 0.1 s. Target: ≤ {TARGET_WORKER_MB:.0f} MB at 1M and 10M polygons. Run the 10x file with"
        " `make bench BENCH_ARGS=\"--only memory --scale 10\"`.",
        "",
        "| source | GeoPackage rows | worker peak MB | API peak MB | measured (date, code) |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    lines += [f"| {s} | {_rows(n)} | {_fmt(w, 0)} | {_fmt(a, 0)} | {when} |" for s, n, w, a, when in rows]
    if not rows:
        lines.append("| not measured yet | | | | |")
    return lines


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _targets_13(ingest: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    """Issue 13's rows: each format against tuned ogr2ogr, the heavy file while repairing, the worker bound."""
    datasets = ingest.get("datasets") or {}
    notes = baseline_notes(ingest)
    lines = []
    for kind, limit in TARGETS_13.items():
        g = (summary.get(kind) or {}).get("geoetl") or {}
        rows = (datasets.get(kind) or {}).get("rows")
        if kind == HEAVY:
            what = (f"{DATASET_LABEL[kind]}: geoetl repairing ≤ {limit:.1f}x ogr2ogr tuned without repair")
        else:
            what = f"geoetl end to end ≤ {limit:.1f}x tuned ogr2ogr, {_rows(BASE_ROWS[kind])} {DATASET_LABEL[kind]}"
        if g.get("ratio") is None:
            lines.append(f"| 13 | {what} | not measured | - |")
            continue
        extra = _at_scale(kind, rows)
        if kind in notes:
            extra += "; baseline: ogr2ogr on the GeoPackage of the same rows"
        if kind == HEAVY and g.get("features_repaired") is not None:
            extra += f"; {g['features_repaired']} features repaired"
        lines.append(f"| 13 | {what} | {g['ratio']:.2f}x{extra} | {_met(g['ratio'] <= limit)} |")
    for kind in summary:
        g = summary[kind].get("geoetl") or {}
        if g.get("peak_rss_mb") is not None:
            rows = (datasets.get(kind) or {}).get("rows")
            ok = g["peak_rss_mb"] <= TARGET_WORKER_MB
            lines.append(f"| 13 | worker peak RSS ≤ {TARGET_WORKER_MB:.0f} MB, {DATASET_LABEL.get(kind, kind)} |"
                         f" {g['peak_rss_mb']:.0f} MB{_at_scale(kind, rows)} | {_met(ok)} |")
    return lines


def _targets(sections: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    lines = ["## Targets (issues 7 and 13)", "", "| issue | target | measured | met |", "| --- | --- | --- | --- |"]
    ingest = sections.get("ingest") or {}
    g = (summary.get("gpkg") or {}).get("geoetl") or {}
    rows = (ingest.get("datasets") or {}).get("gpkg", {}).get("rows")
    if g.get("ratio") is not None:
        note = "" if rows == 1_000_000 else f" (at {_rows(rows)} rows, not the 1M file)"
        lines.append(f"| 7 | geoetl end to end ≤ {TARGET_RATIO:.1f}x tuned ogr2ogr, 1M GeoPackage |"
                     f" {g['ratio']:.2f}x{note} | {_met(g['ratio'] <= TARGET_RATIO)} |")
    else:
        lines.append("| 7 | geoetl end to end ≤ 1.0x tuned ogr2ogr, 1M GeoPackage | not measured | - |")
    for src, n, w, _a, when in _memory_rows(sections, summary):
        if w is not None:
            lines.append(f"| 7 | worker peak RSS ≤ {TARGET_WORKER_MB:.0f} MB, {_rows(n)} GeoPackage |"
                         f" {w:.0f} MB ({src}; {when}) | {_met(w <= TARGET_WORKER_MB)} |")
    orch = sections.get("orchestration") or {}
    tps = median([r["tasks_per_s"] for r in orch.get("runs", []) if r.get("tasks_per_s")])
    if tps is not None:
        lines.append(f"| 7 | hello_world n={orch.get('n')} ≥ {TARGET_TASKS_PER_S:.0f} tasks/s | {tps:.0f} tasks/s |"
                     f" {_met(tps >= TARGET_TASKS_PER_S)} |")
    lines += _targets_13(ingest, summary)
    return lines


def _stages(r: dict[str, Any]) -> str:
    st = ", ".join(f"{n} {v:.2f} s" for n, v in (r.get("seconds_per_stage") or {}).items() if v is not None)
    tasks = "; ".join(f"stage {k}: {t['tasks']} tasks, {t['sum_s']:.2f} s summed, longest {t['max_s']:.2f} s"
                      for k, t in (r.get("task_seconds") or {}).items())
    return (st or "no stage timings") + (f" (tasks: {tasks})" if tasks else "")


def _missed_section(ingest: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    """For each file whose issue-13 target is missed: the stages, the tasks and the profiled run's top frames."""
    datasets = ingest.get("datasets") or {}
    blocks = []
    for kind, per in summary.items():
        missed = missed_targets(kind, per)
        if not missed:
            continue
        d = datasets.get(kind) or {}
        lines = [f"### {DATASET_LABEL.get(kind, kind)} ({kind}): {'; '.join(missed)}", ""]
        timed = [r for r in d.get("runs", []) if r.get("peer") == "geoetl" and not r.get("error")]
        if timed:
            medians = {"seconds_per_stage": per["geoetl"].get("stage_median_s"),
                       "task_seconds": timed[0].get("task_seconds")}
            lines.append(f"- timed runs: median per stage {_stages(medians)} (tasks of the first run)")
            phases = _cpu_phases(per["geoetl"].get("cpu"))
            if phases:
                lines += ["- CPU by stage in the median run (from /proc, stage boundaries to within a status poll):",
                          *phases]
        pr = d.get("profile_run")
        if not pr:
            lines.append("- no profiled run (`--profile never`, or recorded before profiling existed)")
            blocks.append(lines)
            continue
        if pr.get("error"):
            lines.append(f"- the profiled run failed: `{str(pr['error'])[:300]}`")
        else:
            lines.append(f"- profiled run (one more run, not in the medians; py-spy takes a share of the cores):"
                         f" {pr['seconds']:.2f} s, worker peak {_fmt(pr.get('worker_peak_rss_mb'), 0)} MB;"
                         f" {_stages(pr)}")
        prof = pr.get("profile") or {}
        for err in prof.get("errors") or []:
            lines.append(f"- py-spy could not profile: `{err}`; the stage and task timings above are what there is")
        top = (prof.get("top_own") or [])[:PROFILE_SHOWN]
        if top:
            lines += ["", f"Top {len(top)} functions by own time over both workers ({prof.get('samples')} samples,"
                          f" `{prof.get('tool')}`):", "", "| function | samples | share |", "| --- | ---: | ---: |"]
            lines += [f"| `{t['function']}` | {t['samples']} | {t['share'] * 100:.1f} % |" for t in top]
        blocks.append(lines)
    if not blocks:
        return []
    out = ["## Where the time goes: files that miss an issue-13 target", "",
           "Own time = samples whose innermost Python frame is the function (native code called from it counts"
           " for it; idle threads are not sampled)."]
    for b in blocks:
        out += ["", *b]
    return out


NOTES = """## What each contender does

All four load the same generated file into the same PostgreSQL database (peers into schema
`bench`, geoetl into `geo`), one at a time, in a rotating order; each table is dropped after
its run. Every table ends with a GiST index on its geometry.

- **(a) ogr2ogr default**: `ogr2ogr -f PostgreSQL PG:... FILE -nln bench.T -overwrite`. GDAL's
  PostgreSQL driver uses COPY and builds the GiST index itself; no ANALYZE.
- **(b) ogr2ogr tuned**: the same plus `-lco SPATIAL_INDEX=NONE -gt 100000`, then
  `CREATE INDEX ... USING GIST` and `ANALYZE` (both inside the timing). The baseline of the ratios.
- **(b') ogr2ogr tuned -makevalid** (heavy real polygons only): (b) plus `-makevalid`, for
  reference; geoetl repairs invalid geometries by default, (b) loads them as they are.
- **(c) geopandas**: `geopandas.read_file(FILE).to_postgis(T, engine)` in its own Python process
  (import time included); GeoAlchemy2 creates the GiST index with the table. The whole file is
  in memory, so it is not run above 2M rows. GeoParquet is read with `geopandas.read_parquet`.
- **(d) geoetl**: `POST /api/jobs/ingest_vector`, then `GET /api/jobs/status/{id}` every 0.2 s
  until `completed`, with the two workers of the local stack. It does more than the others: it
  reads the file from blob storage (stage 1 plans parts and each load task reads its own by
  range reads: GeoPackage fid ranges in place, Shapefile record ranges, CSV byte ranges, GeoJSON
  runs of whole features, GeoParquet row groups), checks every geometry's validity and repairs
  the invalid ones, promotes to Multi*, loads with parallel binary COPY, builds the GiST index,
  ANALYZEs, aggregates the crowded tiles of a point table of 1M rows or more, and writes a STAC
  item. The upload to blob storage is timed separately.
- GeoParquet: GDAL 3.6 (Debian 12's ogr2ogr) has no Parquet driver, so (a) and (b) load the
  GeoPackage of the same rows, and that is the baseline of the GeoParquet ratio.
- Shapefile: the .shp is uploaded with its .shx, .dbf, .prj and .cpg; `survey_date` is
  `survey_dat` in the DBF (10-letter field names).
- CSV: every contender is told the point columns (`lat`, `lon`) and EPSG:4326; the ogr2ogr and
  geopandas runs use GDAL's `X_POSSIBLE_NAMES`, `Y_POSSIBLE_NAMES` and `AUTODETECT_TYPE=YES`.
- Peak RSS counts the client side only; the PostgreSQL server's memory (shared by every
  contender, and mostly shared buffers) is not included.
- The machine is shared: other work running at the same time shows up as spread between runs,
  which is why each number is a median and the individual runs are listed.
"""


def render(results: dict[str, Any], history: str = "") -> str:
    """The whole report; `history` is the preserved body of the history section."""
    sections = results.get("sections") or {}
    ingest = sections.get("ingest") or {}
    summary = summarise_ingest(ingest) if ingest else {}
    env = results.get("environment") or {}
    out = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`.venv/bin/python -m bench`) from real runs on the machine below;"
        " raw runs are in `bench/results/latest.json`. Benchmarks never run in CI and gate no test.",
        "Data is generated by the benchmark (seeded, cached in `bench/data/`): polygons with 8 vertices"
        " and 7 attributes (int, float, text, date) as a GeoPackage, and the very same rows as a Shapefile"
        " and as GeoParquet, points as a lat/lon CSV, other polygons as GeoJSON; `--scale 1` is 1M / 1M / 200k"
        " rows, `--scale 10` the 10M-polygon variant. The heavy real polygons are the test corpus's"
        " `@geo-maps/countries-maritime-10m` GeoJSON (250 countries, many invalid), the same file at every scale.",
        "",
        "## Machine and versions",
        "",
        *_machine_table(env),
        "",
        *_targets(sections, summary),
        "",
    ]
    if ingest:
        out += [*_ingest_section(ingest, summary), ""]
        cpu = _cpu_section(summary)
        if cpu:
            out += [*cpu, ""]
        missed = _missed_section(ingest, summary)
        if missed:
            out += [*missed, ""]
    if sections.get("orchestration"):
        out += [*_orchestration_section(sections["orchestration"]), ""]
    out += [*_memory_section(sections, summary), "", NOTES, HISTORY_HEADING, "",
            (history.strip("\n") + "\n") if history.strip() else DEFAULT_HISTORY]
    return "\n".join(out).rstrip("\n") + "\n"
