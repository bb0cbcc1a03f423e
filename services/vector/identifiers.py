"""PostgreSQL identifier rules: which table names we accept, and how source column names are cleaned.

SQL is always composed with quoted identifiers, so a reserved word as a column name is harmless;
table names are held to stricter rules because users type them into URLs and SQL consoles.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

MAX_IDENTIFIER_BYTES = 63
ID_COLUMN = "id"
GEOMETRY_COLUMN = "geom"
# Names a source column cannot take: PostgreSQL's system columns (CREATE TABLE refuses them) and the
# aliases the features API's queries give their own columns beside the table's (a property of that
# name would be shadowed in every answer).
SYSTEM_COLUMNS = frozenset({"tableoid", "xmin", "cmin", "xmax", "cmax", "ctid"})
SERVING_ALIASES = frozenset({"tipg_id", "tipg_geom", "tipg_ctid", "tipg_matched", "tipg_rank"})
# In a chunk only: the feature number of a row stage 1 left invalid for stage 2 to repair (null otherwise)
REPAIR_COLUMN = "__geoetl_repair_feature"

# pg_get_keywords() categories R (reserved) and T (reserved, can be function or type), PostgreSQL 15-17.
RESERVED_WORDS = frozenset(
    """all analyse analyze and any array as asc asymmetric authorization binary both case cast check collate
    collation column concurrently constraint create cross current_catalog current_date current_role
    current_schema current_time current_timestamp current_user default deferrable desc distinct do else end
    except false fetch for foreign freeze from full grant group having ilike in initially inner intersect into
    is isnull join lateral leading left like limit localtime localtimestamp natural not notnull null offset on
    only or order outer overlaps placing primary references returning right select session_user similar some
    symmetric system_user table tablesample then to trailing true union unique user using variadic verbose
    when where window with""".split()
)

TABLE_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
# PostGIS's own catalog names: the features API leaves tables so named out of every schema it serves,
# so a dataset by one of these names would be published and never served.
POSTGIS_CATALOG_NAMES = frozenset({"spatial_ref_sys", "geometry_columns", "geography_columns"})


def table_name_problem(name: str) -> str | None:
    """Why `name` is not an acceptable table name, or None when it is."""
    shown = repr(name) if len(name) <= 80 else f"{name[:60]!r}... ({len(name)} characters)"
    if not TABLE_NAME_RE.match(name):
        return (
            f"table_name {shown} must start with a lowercase letter and contain only lowercase letters, "
            "digits and underscores"
        )
    if len(name.encode()) > MAX_IDENTIFIER_BYTES:
        return f"table_name {shown} is longer than {MAX_IDENTIFIER_BYTES} bytes (PostgreSQL's identifier limit)"
    if name in RESERVED_WORDS:
        return f"table_name {shown} is a reserved word in PostgreSQL; choose another name"
    if name in POSTGIS_CATALOG_NAMES:
        return (
            f"table_name {shown} is the name of a PostGIS catalog table, which the features API never serves;"
            " choose another name"
        )
    return None


def _truncate(name: str, max_bytes: int) -> str:
    """At most max_bytes of UTF-8, cut at a character boundary."""
    return name.encode()[:max_bytes].decode("utf-8", errors="ignore")


def clean_name(raw: str) -> str:
    """Lowercase letters (of any script: 'ÉCOLE' -> 'école', '名前' stays), digits and '_'; anything else
    becomes '_'; never empty, never starting with a digit, at most 63 bytes. The source name is kept in
    the job result's and the STAC item's columns."""
    text = unicodedata.normalize("NFC", str(raw)).strip().lower()
    name = re.sub(r"\W+", "_", text)
    name = re.sub(r"_+", "_", name).strip("_")
    if not name:
        name = "column"
    if name[0].isdigit():
        name = "c_" + name
    return _truncate(name, MAX_IDENTIFIER_BYTES)


class ColumnNamer:
    """Maps source column names to unique clean names, stable across batches and layers.

    The id and geometry column names, PostgreSQL's system columns and the serving queries' aliases
    are taken before any source column, so a source column called "id", "geom" or "xmin" becomes
    "id_2" / "geom_2" / "xmin_2"; other collisions get _2, _3, ... in order of appearance.
    """

    def __init__(self) -> None:
        self.mapping: dict[str, str] = {}
        self._taken: set[str] = {ID_COLUMN, GEOMETRY_COLUMN, *SYSTEM_COLUMNS, *SERVING_ALIASES}

    def name(self, raw: str) -> str:
        if raw in self.mapping:
            return self.mapping[raw]
        base = clean_name(raw)
        candidate, n = base, 1
        while candidate in self._taken:
            n += 1
            suffix = f"_{n}"
            candidate = _truncate(base, MAX_IDENTIFIER_BYTES - len(suffix)) + suffix
        self._taken.add(candidate)
        self.mapping[raw] = candidate
        return candidate

    def names(self, raws: Iterable[str]) -> list[str]:
        return [self.name(r) for r in raws]

    def resolve(self, requested: str) -> str | None:
        """A column a user named in a parameter: by its source name, its clean name, or case-insensitively."""
        if requested in self.mapping:
            return self.mapping[requested]
        if requested in self.mapping.values():
            return requested
        lowered = {k.lower(): v for k, v in self.mapping.items()}
        if requested.lower() in lowered:
            return lowered[requested.lower()]
        cleaned = clean_name(requested)
        return cleaned if cleaned in self.mapping.values() else None
