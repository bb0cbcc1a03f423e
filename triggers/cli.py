"""The `geoetl` command: serve, worker, migrate, ingest, status, cancel."""

from __future__ import annotations

import argparse
import json
import sys
import time

from config import get_settings
from config.logging import configure_logging


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    s = get_settings()
    uvicorn.run(
        "triggers.app:create_app",
        factory=True,
        host=args.host or s.api_host,
        port=args.port or s.api_port,
        log_level=s.log_level.lower(),
        workers=args.workers,
        h11_max_incomplete_event_size=s.max_request_bytes,  # long URLs reach the API's own limits (JSON 400s)
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from infrastructure.memory import limit_allocator_growth, skip_dataframe_libraries

    limit_allocator_growth()
    skip_dataframe_libraries()
    from triggers.worker import Worker

    Worker(concurrency=args.concurrency).run()
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from infrastructure.blob import get_blob_store
    from infrastructure.migrate import migrate

    report = migrate()
    if not args.no_storage:
        s = get_settings()
        store = get_blob_store()
        for container in (s.source_container, s.intermediate_container):
            store.create_container(container)
        report["containers"] = [s.source_container, s.intermediate_container]
    print(json.dumps(report, indent=2))
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from pathlib import Path

    from triggers.client import EXTENSIONS, ApiClient, default_table_name, follow, upload

    path = Path(args.file)
    ext = ".gdb.zip" if path.name.lower().endswith(".gdb.zip") else path.suffix.lower()
    if not path.is_file():
        print(f"error: {path} is not a file", file=sys.stderr)
        return 2
    if ext not in EXTENSIONS:
        print(f"error: {ext or 'no extension'} is not supported ({', '.join(sorted(EXTENSIONS))})", file=sys.stderr)
        return 2
    if bool(args.lat) != bool(args.lon):
        print("error: --lat and --lon go together", file=sys.stderr)
        return 2
    if args.wkt and args.lat:
        print("error: give either --lat/--lon or --wkt, not both", file=sys.stderr)
        return 2
    s = get_settings()
    container = args.container or s.source_container
    blob_name = args.blob_name or f"uploads/{path.name}"
    t0 = time.perf_counter()
    upload(path, blob_name, container)
    print(f"uploaded {path} to {container}/{blob_name} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    converter: dict[str, str] = {}
    if args.layer:
        converter["layer_name"] = args.layer
    if args.lat:
        converter |= {"lat_name": args.lat, "lon_name": args.lon}
    if args.wkt:
        converter["wkt_column"] = args.wkt
    params: dict[str, object] = {
        "blob_name": blob_name,
        "file_extension": ext.lstrip("."),
        "table_name": args.table or default_table_name(path),
        "container_name": container,
        "converter_params": converter,
    }
    if args.schema:
        params["schema"] = args.schema
    if args.chunk_size:
        params["chunk_size"] = args.chunk_size
    if args.if_exists:
        params["if_exists"] = args.if_exists
    client = ApiClient(args.api, args.key)
    code, body = client.request("POST", "/jobs/ingest_vector", params)
    if code >= 400:
        print(f"error ({code} {body.get('error')}): {body.get('message')}", file=sys.stderr)
        return 1
    job_id = body["job_id"]
    print(f"job {job_id} {body.get('status')}", file=sys.stderr)
    if not args.wait:
        print(job_id)
        return 0
    st = follow(client, job_id)
    if st["status"] in ("failed", "cancelled"):
        err = st.get("error_details") or {}
        print(f"job {st['status']} at stage {err.get('stage')}: {err.get('error')}", file=sys.stderr)
        return 1
    result = st.get("result_data") or {}
    summary = result.get("summary", {})
    print(f"loaded {summary.get('total_rows_uploaded', '?')} rows into {params['table_name']}")
    print(f"features: {result.get('ogc_features_url')}")
    print(f"viewer:   {result.get('viewer_url')}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from triggers.client import ApiClient

    code, body = ApiClient(args.api, args.key).request("GET", f"/jobs/status/{args.job_id}")
    print(json.dumps(body, indent=2))
    return 0 if code == 200 else 1


def cmd_cancel(args: argparse.Namespace) -> int:
    from triggers.client import ApiClient

    code, body = ApiClient(args.api, args.key).request("POST", f"/jobs/{args.job_id}/cancel")
    if code != 200:
        print(f"error ({code} {body.get('error')}): {body.get('message')}", file=sys.stderr)
        return 1
    print(body.get("message"), file=sys.stderr)
    print(json.dumps(body, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="geoetl", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the HTTP API (uvicorn)")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--workers", type=int, default=1)
    s.set_defaults(func=cmd_serve)

    w = sub.add_parser("worker", help="consume the job and task queues")
    w.add_argument("--concurrency", type=int, help="messages handled at once (default WORKER_CONCURRENCY)")
    w.set_defaults(func=cmd_worker)

    m = sub.add_parser("migrate", help="create or upgrade the database and the default containers (idempotent)")
    m.add_argument("--no-storage", action="store_true", help="skip creating the blob containers")
    m.set_defaults(func=cmd_migrate)

    i = sub.add_parser("ingest", help="upload a vector file, submit ingest_vector, optionally wait")
    i.add_argument("file")
    i.add_argument("--table", help="target table (default: from the file name)")
    i.add_argument("--layer", help="layer of a GeoPackage")
    i.add_argument("--lat", help="CSV latitude column")
    i.add_argument("--lon", help="CSV longitude column")
    i.add_argument("--wkt", help="CSV WKT geometry column")
    i.add_argument("--schema", help="target schema (default geo)")
    i.add_argument("--chunk-size", type=int)
    i.add_argument("--if-exists", choices=["fail", "replace", "append"], help="when the table exists (default fail)")
    i.add_argument("--container", help="source container (default SOURCE_CONTAINER)")
    i.add_argument("--blob-name", help="blob name (default uploads/<file name>)")
    i.add_argument("--wait", action="store_true", help="show progress until the job ends")
    i.set_defaults(func=cmd_ingest)

    st = sub.add_parser("status", help="print a job's status")
    st.add_argument("job_id")
    st.set_defaults(func=cmd_status)

    c = sub.add_parser("cancel", help="cancel a queued or running job (its staging table and chunks are removed)")
    c.add_argument("job_id")
    c.set_defaults(func=cmd_cancel)
    for sp in (i, st, c):
        sp.add_argument("--api", help="API base URL (default PUBLIC_BASE_URL)")
        sp.add_argument("--key", help="API key (default: the first of API_KEYS)")
    return p


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
