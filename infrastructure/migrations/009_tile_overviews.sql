-- Pre-aggregated vector tiles of large point tables (services/vector/overviews.py).
-- A set describes one build for one table (by oid); its tiles are served only while the table's
-- comment (geoetl's owner JSON: job, run, version) still equals the one the set recorded at publish,
-- so a replaced, appended or dropped table (or a reused oid) never gets another version's tiles.
CREATE TABLE IF NOT EXISTS app.tile_overview_sets (
    table_oid     oid PRIMARY KEY,
    table_comment text,                    -- NULL until the publishing transaction sets it
    layer         text NOT NULL,           -- MVT layer name, extent and buffer the tiles were encoded with
    extent        integer NOT NULL,
    buffer        integer NOT NULL,
    budget        integer NOT NULL,        -- features a tile holds before it is aggregated
    max_zoom      smallint NOT NULL,       -- the highest zoom with a tile over the budget (capped)
    points        bigint NOT NULL,
    tiles         integer NOT NULL,
    seconds       real NOT NULL,
    built_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS app.tile_overviews (
    table_oid   oid NOT NULL REFERENCES app.tile_overview_sets (table_oid) ON DELETE CASCADE,
    z           smallint NOT NULL,
    x           integer NOT NULL,
    y           integer NOT NULL,
    point_count bigint NOT NULL,
    mvt         bytea NOT NULL,
    PRIMARY KEY (table_oid, z, x, y)
);

-- the feature of an aggregated tile: one point per grid cell and how many points it stands for
DO $$ BEGIN
    CREATE TYPE app.tile_cluster AS (geom geometry, point_count integer);
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;
