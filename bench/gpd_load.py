"""Peer (c) in its own process: geopandas.read_file + GeoDataFrame.to_postgis, as a user writes it.

Run as `python -m bench.gpd_load PATH KIND SCHEMA TABLE`; prints a JSON line of phase timings.
A separate process so its peak memory is its own and the harness stays small.
"""

from __future__ import annotations

import json
import sys
import time


def main(argv: list[str]) -> int:
    path, kind, schema, table = argv
    t0 = time.perf_counter()
    import geopandas as gpd
    from sqlalchemy import create_engine

    from bench.pg import sqlalchemy_url

    t_import = time.perf_counter()
    if kind == "csv":
        # GDAL's CSV open options, passed through read_file: the lat/lon columns make the points.
        gdf = gpd.read_file(path, X_POSSIBLE_NAMES="lon", Y_POSSIBLE_NAMES="lat", AUTODETECT_TYPE="YES")
        gdf = gdf.set_crs(4326)
    elif kind == "parquet":
        gdf = gpd.read_parquet(path)  # what a user writes for GeoParquet (GDAL 3.6 has no Parquet driver)
    else:
        gdf = gpd.read_file(path)
    t_read = time.perf_counter()
    engine = create_engine(sqlalchemy_url())
    gdf.to_postgis(table, engine, schema=schema, if_exists="replace", index=False)
    engine.dispose()
    t_write = time.perf_counter()
    print(json.dumps({
        "rows": len(gdf),
        "import_s": round(t_import - t0, 3),
        "read_s": round(t_read - t_import, 3),
        "to_postgis_s": round(t_write - t_read, 3),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
