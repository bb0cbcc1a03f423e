"""The `geoetl` command: serve, worker, migrate, ingest, status."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from config import get_settings


def _logging() -> None:
    logging.basicConfig(
        level=get_settings().log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
    )


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
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
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
    return p


def main(argv: list[str] | None = None) -> int:
    _logging()
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
