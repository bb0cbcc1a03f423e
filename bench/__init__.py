"""`make bench`: geoetl against ogr2ogr and geopandas on the same database, and the orchestrator alone."""
