"""Machine and versions, recorded with every run so numbers are never read without their context."""

from __future__ import annotations

import os
import platform
import sys
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import psutil

from bench import pg
from bench.geoetl_run import versions as geoetl_versions
from bench.peers import ogr2ogr_version


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "not installed"


def collect() -> dict[str, Any]:
    import pyogrio

    versions: dict[str, Any] = {
        "ogr2ogr": ogr2ogr_version(),
        "pyogrio_gdal": pyogrio.__gdal_version_string__,
        "python": sys.version.split()[0],
        "python_libs": " / ".join(_version(p) for p in ("geopandas", "pyogrio", "shapely", "sqlalchemy")),
        **geoetl_versions(),
    }
    try:
        with pg.connect() as conn:
            versions.update(pg.server_versions(conn))
    except Exception as exc:  # noqa: BLE001 - a report without server versions is still a report
        versions["postgresql"] = f"unreachable ({exc})"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "platform": platform.platform(),
            "cpu_model": cpu_model(),
            "cores": os.cpu_count(),
            "ram_gb": round(psutil.virtual_memory().total / 1024**3, 1),
            "loadavg": load,
        },
        "versions": versions,
    }
