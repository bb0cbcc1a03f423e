"""What the CLI's `ingest` and `status` do: upload, submit over HTTP, follow the job."""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, TextIO

from config import get_settings
from infrastructure.blob import get_blob_store

SIDECARS = (".dbf", ".shx", ".prj", ".cpg", ".qix", ".sbn", ".sbx")
EXTENSIONS = {".csv", ".geojson", ".json", ".gpkg", ".kml", ".kmz", ".shp", ".zip",
              ".parquet", ".fgb", ".geojsonl", ".geojsons", ".gdb.zip", ".gml", ".gpx", ".topojson"}


class ApiClient:
    def __init__(self, base_url: str | None = None, key: str | None = None) -> None:
        s = get_settings()
        self.base = (base_url or s.base_url).rstrip("/") + "/api"
        self.key = key if key is not None else (s.api_key_list[0] if s.api_key_list else None)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.key:
            req.add_header("x-functions-key", self.key)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            try:
                return err.code, json.loads(err.read() or b"{}")
            except ValueError:
                return err.code, {"error": "http_error", "message": str(err)}


def default_table_name(path: Path) -> str:
    name = re.sub(r"[^a-z0-9_]+", "_", path.stem.lower()).strip("_") or "layer"
    return name if name[0].isalpha() else f"t_{name}"[:63]


def upload(path: Path, blob_name: str, container: str) -> list[str]:
    """Upload the file (and a shapefile's sidecars) to the source container; returns the blob names."""
    store = get_blob_store()
    store.create_container(container)
    names = [blob_name]
    store.upload_file(container, blob_name, path)
    if path.suffix.lower() == ".shp":
        stem = blob_name[: -len(path.suffix)]
        for ext in SIDECARS:
            for side in (path.with_suffix(ext), path.with_suffix(ext.upper())):
                if side.exists():
                    store.upload_file(container, stem + ext, side)
                    names.append(stem + ext)
                    break
    return names


def progress_line(st: dict[str, Any]) -> str:
    p = st.get("progress", {})
    stage = f"stage {st.get('stage')}/{st.get('total_stages')} {st.get('stage_name') or ''}".strip()
    parts = [f"[{st.get('status')}] {stage}"]
    if p.get("chunks_total"):
        done, total = p.get("chunks_done", 0), p["chunks_total"]
        filled = int(20 * done / total) if total else 0
        parts.append(f"chunks {done}/{total} {'#' * filled}{'.' * (20 - filled)}")
    if p.get("rows_loaded") is not None:
        parts.append(f"rows {p['rows_loaded']:,}")
    elif p.get("tasks_total"):
        parts.append(f"tasks {p.get('tasks_completed', 0)}/{p['tasks_total']}")
    return "  ".join(parts)


def follow(client: ApiClient, job_id: str, out: TextIO = sys.stderr, every: float = 0.5) -> dict[str, Any]:
    """Poll until the job ends, redrawing one progress line."""
    last = ""
    while True:
        code, st = client.request("GET", f"/jobs/status/{job_id}")
        if code != 200:
            raise RuntimeError(f"status of {job_id} answered {code}: {st.get('message')}")
        line = progress_line(st)
        if line != last:
            out.write("\r" + line.ljust(len(last)))
            out.flush()
            last = line
        if st.get("status") in ("completed", "failed", "cancelled"):
            out.write("\n")
            return st
        time.sleep(every)
