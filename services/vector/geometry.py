"""Per-batch geometry preparation, vectorised with shapely 2 array functions.

Order matters: drop nulls, force 2D, unpack collections, reproject to EPSG:4326, simplify or
quantize, then repair in the final coordinates (validity depends on them) and promote to Multi*.
Batches that are already valid pay only for the validity check.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import shapely
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError

from core.errors import PermanentTaskError
from services.vector import curves, simple_rings
from services.vector.ewkb import one_value, single, value_view, wkb_layout
from services.vector.repair import (
    FAIL,
    HUGE_FEATURE_BYTES,
    KEEP,
    REPAIR,
    Progress,
    RepairPolicy,
    invalid_refused,
    make_valid_all,
    refuse_invalid,
    run_child,
)
from services.vector.repair_child import nan_vertex_rows

POINT, LINE, POLYGON, COLLECTION = "point", "line", "polygon", "collection"
# shapely type ids: 0 Point, 1 LineString, 2 LinearRing, 3 Polygon, 4-6 Multi*, 7 GeometryCollection
_FAMILY_BY_TYPE = np.array([POINT, LINE, LINE, POLYGON, POINT, LINE, POLYGON, COLLECTION], dtype=object)
_FAMILY_CODES = np.array(sorted([LINE, POINT, POLYGON]), dtype=object)
MULTI_TYPE = {POINT: "MultiPoint", LINE: "MultiLineString", POLYGON: "MultiPolygon"}
_MULTI_OF = {POINT: shapely.multipoints, LINE: shapely.multilinestrings, POLYGON: shapely.multipolygons}
_SINGLE_TYPE_IDS = (0, 1, 2, 3)
WGS84 = CRS.from_epsg(4326)
MAX_ABS_COORDINATE = 1e10  # beyond any coordinate reference system on Earth (metres, feet or degrees)
# ISO WKB types GEOS cannot hold (code % 1000); 8-12 (curves) are made linear first (curves.py)
_NONLINEAR_WKB = {8: "CircularString", 9: "CompoundCurve", 10: "CurvePolygon", 11: "MultiCurve",
                  12: "MultiSurface", 13: "Curve", 14: "Surface", 15: "PolyhedralSurface", 16: "TIN", 17: "Triangle"}


@dataclass
class GeometryStats:
    """Counts reported in the job result, summed over batches."""

    null_geometry: int = 0
    collapsed: int = 0
    repaired: int = 0
    z_dropped: int = 0
    collections_unpacked: int = 0
    invalid_kept: int = 0
    linearized: int = 0  # curved geometries stroked into straight segments (curves.py)
    families: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        return {
            "null_geometry": self.null_geometry,
            "collapsed": self.collapsed,
            "repaired": self.repaired,
            "z_dropped": self.z_dropped,
            "collections_unpacked": self.collections_unpacked,
            "invalid_kept": self.invalid_kept,
            "linearized": self.linearized,
        }


@dataclass
class GeometryOptions:
    simplify_tolerance: float | None = None
    preserve_topology: bool = True
    quantize_grid: float | None = None
    repair: RepairPolicy = field(default_factory=RepairPolicy)
    defer_repair: bool = False  # stage 1 of a converted file: stage 2 repairs (in parallel)
    progress: Progress | None = None


LONLAT_TOLERANCE = 1e-6  # degrees: exports often round -180/180 a hair outside the range


class Reprojector:
    """Source CRS to EPSG:4326, or a coordinate check when the source declares no CRS."""

    def __init__(self, source_crs: str | None, label: str) -> None:
        self.label = label
        self.transformer: Transformer | None = None
        try:
            self.source = CRS.from_user_input(source_crs) if source_crs else None
            if self.source is not None and not self._is_wgs84(self.source):
                self.transformer = Transformer.from_crs(self.source, WGS84, always_xy=True)
        except CRSError as exc:
            raise PermanentTaskError(
                f"{label}: its coordinate reference system cannot be used ({exc}); set converter_params.crs"
            ) from None

    @staticmethod
    def _is_wgs84(crs: CRS) -> bool:
        two_d = crs.to_2d() if crs.is_geographic else crs
        return bool(two_d.equals(WGS84, ignore_axis_order=True) or two_d.to_epsg() in (4326, 4979))

    @property
    def description(self) -> str:
        if self.source is None:
            return "none declared (taken as EPSG:4326)"
        return self.source.to_string()

    def apply(self, geoms: np.ndarray, present: np.ndarray, offset: int) -> np.ndarray:
        if not present.any():
            return geoms
        self.check(_bounds_with_nan(geoms[present]), present, offset)
        if self.transformer is None:
            return geoms
        t = self.transformer

        def _xy(coords: np.ndarray) -> np.ndarray:
            x, y = t.transform(coords[:, 0], coords[:, 1])
            return np.column_stack([x, y])

        out = geoms.copy()
        out[present] = shapely.transform(geoms[present], _xy)
        bounds = shapely.bounds(out[present])
        bad = ~np.isfinite(bounds).all(axis=1)
        if bad.any():
            idx = offset + int(np.flatnonzero(present)[np.flatnonzero(bad)[0]])
            raise PermanentTaskError(
                f"{self.label}: feature {idx} cannot be reprojected from {self.source.to_string()} to EPSG:4326 "
                "(its coordinates fall outside the projection's area of use); check the file's CRS "
                "or set converter_params.crs"
            )
        return out

    @property
    def identity(self) -> bool:
        return self.transformer is None

    def check(self, bounds: np.ndarray, present: np.ndarray, offset: int) -> None:
        """Bounds of the present geometries: numbers any CRS can hold, and degrees where the source is
        (declared or taken as) EPSG:4326."""
        self._check_magnitude(bounds, present, offset)
        if self.transformer is None:
            self._check_lonlat(bounds, present, offset)

    def _first_bad(self, bad: np.ndarray, present: np.ndarray, offset: int) -> tuple[int, int]:
        i = int(np.flatnonzero(bad)[0])
        return i, offset + int(np.flatnonzero(present)[i])

    def _check_magnitude(self, b: np.ndarray, present: np.ndarray, offset: int) -> None:
        """Infinite, NaN or astronomically large coordinates are corrupt data in any CRS."""
        bad = ~(np.isfinite(b) & (np.abs(b) <= MAX_ABS_COORDINATE)).all(axis=1)
        if bad.any():
            i, idx = self._first_bad(bad, present, offset)
            raise PermanentTaskError(
                f"{self.label}: feature {idx} has coordinates no coordinate reference system can hold "
                f"(bounds {[float(v) for v in b[i]]}); the file is corrupt or its coordinates are not numbers of "
                "its CRS"
            )

    def _check_lonlat(self, b: np.ndarray, present: np.ndarray, offset: int) -> None:
        """Coordinates taken as EPSG:4326 (declared, implied by GeoJSON, or assumed) must be degrees:
        metres loaded as degrees would be served silently wrong."""
        tol = LONLAT_TOLERANCE
        bad = ~((b[:, 0] >= -180 - tol) & (b[:, 2] <= 180 + tol) & (b[:, 1] >= -90 - tol) & (b[:, 3] <= 90 + tol))
        if bad.any():
            i, idx = self._first_bad(bad, present, offset)
            said = "declares no coordinate reference system" if self.source is None else "is in EPSG:4326"
            raise PermanentTaskError(
                f"{self.label} {said} but its coordinates are not longitudes/latitudes "
                f"(feature {idx} has bounds {[round(float(v), 3) for v in b[i]]}); they are probably projected: "
                "set converter_params.crs to the CRS they are in (e.g. \"EPSG:27700\")"
            )


def _bounds_with_nan(geoms: np.ndarray) -> np.ndarray:
    """Bounds of each geometry, NaN where one of its vertices is NaN: GEOS leaves it out of the bounds
    (LINESTRING (0 0, NaN 1) has finite ones), and repair then dropped the geometry as collapsed."""
    bounds = shapely.bounds(geoms)
    bounds[nan_vertex_rows(geoms)] = np.nan
    return bounds


def _wkb_type_name(value: bytes) -> str | None:
    """The name of a WKB geometry type GEOS cannot hold (curves, surfaces), or None."""
    if len(value) < 5 or value[0] not in (0, 1):
        return None
    code = struct.unpack("<I" if value[0] == 1 else ">I", value[1:5])[0] & 0x0FFFFFFF
    return _NONLINEAR_WKB.get(code % 1000)


def _undecodable(raw: np.ndarray, offset: int, label: str) -> PermanentTaskError:
    """Name the first feature of a batch whose WKB GEOS cannot decode, and why."""
    for i, value in enumerate(raw):
        if value is None:
            continue
        try:
            shapely.from_wkb(value)
        except (shapely.errors.GEOSException, NotImplementedError, ValueError) as exc:
            kind = _wkb_type_name(bytes(value))
            if kind:
                return PermanentTaskError(
                    f"{label}: feature {offset + i} is a {kind}, a geometry type that cannot be loaded (points, "
                    "lines, polygons and curves can); convert it to polygons first"
                )
            return PermanentTaskError(f"{label}: feature {offset + i} has a geometry that cannot be decoded ({exc})")
    return PermanentTaskError(f"{label}: a geometry of features {offset}-{offset + len(raw) - 1} cannot be decoded")


def families_of(geoms: np.ndarray) -> np.ndarray:
    return _FAMILY_BY_TYPE[shapely.get_type_id(geoms)]


def _flatten(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Single parts of (possibly nested) collections, with the index of the geometry each came from."""
    parts, idx = shapely.get_parts(geoms, return_index=True)
    while len(parts) and (shapely.get_type_id(parts) >= 4).any():
        multi = shapely.get_type_id(parts) >= 4
        sub, sub_idx = shapely.get_parts(parts[multi], return_index=True)
        parts = np.concatenate([parts[~multi], sub])
        idx = np.concatenate([idx[~multi], idx[multi][sub_idx]])
        order = np.argsort(idx, kind="stable")
        parts, idx = parts[order], idx[order]
    return parts, idx


def _collect(parts: np.ndarray, idx: np.ndarray, part_family: np.ndarray, n: int) -> np.ndarray:
    """Rebuild one Multi* per index from its parts (every part of an index has the same family)."""
    out = np.full(n, None, dtype=object)
    for fam, make in _MULTI_OF.items():
        sel = part_family == fam
        if sel.any():
            make(parts[sel], indices=idx[sel], out=out)
    return out


def mixed_collection(label: str, feature: int, kinds: str) -> PermanentTaskError:
    """A GeometryCollection whose parts are of several families (found here or by the repair child)."""
    return PermanentTaskError(
        f"{label}: feature {feature} is a GeometryCollection mixing {kinds} parts; a table column holds one"
        " kind of geometry per feature. Split the collection in the source file"
    )


def unpack_collections(geoms: np.ndarray, offset: int, label: str, stats: GeometryStats) -> np.ndarray:
    """GeometryCollections of one family become that Multi*; mixing families is refused, naming the feature."""
    is_gc = shapely.get_type_id(geoms) == 7
    if not is_gc.any():
        return geoms
    where = np.flatnonzero(is_gc)
    parts, idx = _flatten(geoms[where])
    keep = ~shapely.is_empty(parts)
    parts, idx = parts[keep], idx[keep]
    fam = families_of(parts)
    codes = np.searchsorted(_FAMILY_CODES, fam)
    lo = np.full(len(where), len(_FAMILY_CODES))
    hi = np.full(len(where), -1)
    np.minimum.at(lo, idx, codes)
    np.maximum.at(hi, idx, codes)
    mixed = np.flatnonzero((hi >= 0) & (lo != hi))
    if len(mixed):
        j = int(mixed[0])
        raise mixed_collection(label, offset + int(where[j]), " and ".join(sorted(set(fam[idx == j]))))
    out = geoms.copy()
    rebuilt = _collect(parts, idx, fam, len(where))
    rebuilt[shapely.is_missing(rebuilt)] = shapely.from_wkt("GEOMETRYCOLLECTION EMPTY")
    out[where] = rebuilt
    stats.collections_unpacked += len(where)
    return out


def invalid_mask(geoms: np.ndarray) -> np.ndarray:
    return ~shapely.is_valid(geoms) & ~shapely.is_missing(geoms)


def repair(
    geoms: np.ndarray,
    offset: int,
    label: str,
    stats: GeometryStats,
    options: GeometryOptions | None = None,
    features: np.ndarray | None = None,
) -> np.ndarray:
    """Invalid geometries by geometry_params.invalid: repaired (make_valid 'structure' semantics, keeping only
    parts of the feature's own family, within a time budget per feature), kept as they are, or refused.
    `features` numbers the rows in messages (default: offset + row)."""
    options = options or GeometryOptions()
    policy = options.repair
    bad = invalid_mask(geoms)
    if not bad.any():
        return geoms
    where = np.flatnonzero(bad)
    numbers = (offset + where) if features is None else np.asarray(features)[where]
    if policy.mode == FAIL:
        raise refuse_invalid(geoms[where[0]], int(numbers[0]), label)
    if policy.mode == KEEP:
        stats.invalid_kept += len(where)
        return geoms
    if options.defer_repair:
        return geoms
    assert policy.mode == REPAIR
    family = families_of(geoms[where])
    fixed = make_valid_all(geoms[where], numbers, label, policy, options.progress)
    parts, idx = _flatten(fixed)
    same = (families_of(parts) == family[idx]) & ~shapely.is_empty(parts)
    rebuilt = _collect(parts[same], idx[same], family[idx[same]], len(where))
    out = geoms.copy()
    out[where] = rebuilt  # None where nothing of the family survived: counted as collapsed
    stats.repaired += int((~shapely.is_missing(rebuilt)).sum())
    return out


def promote_to_multi(geoms: np.ndarray) -> np.ndarray:
    type_ids = shapely.get_type_id(geoms)
    single = np.isin(type_ids, _SINGLE_TYPE_IDS)
    if not single.any():
        return geoms
    out = geoms.copy()
    where = np.flatnonzero(single)
    fam = _FAMILY_BY_TYPE[type_ids[where]]
    out[where] = _collect(geoms[where], np.arange(len(where)), fam, len(where))
    return out


@dataclass
class Prepared:
    """One batch, prepared: `keep` marks the rows to load; `wkb` is their Multi* WKB (rows of `keep` only)."""

    keep: np.ndarray
    wkb: pa.Array
    deferred: np.ndarray | None = None  # rows of `keep` left invalid for stage 2 to repair (defer_repair)

    @staticmethod
    def joined(pieces: list[Prepared]) -> Prepared:
        """Consecutive pieces of one batch as one."""
        if len(pieces) == 1:
            return pieces[0]
        deferred = None
        if any(p.deferred is not None for p in pieces):
            deferred = np.concatenate(
                [p.deferred if p.deferred is not None else np.zeros(int(p.keep.sum()), bool) for p in pieces]
            )
        wkb = pa.concat_arrays([p.wkb.cast(pa.binary()) for p in pieces])
        return Prepared(np.concatenate([p.keep for p in pieces]), wkb, deferred)


# 9-byte WKB header that wraps one single part into its Multi* (little-endian, 1 part), by WKB type 1-3
_MULTI_HEADER = pa.array(
    [b""] + [b"\x01" + struct.pack("<II", t + 3, 1) for t in (1, 2, 3)] + [b""] * 3, type=pa.binary()
)


def _plain_wkb_types(wkb: pa.Array) -> np.ndarray | None:
    """WKB type codes 1-6 of little-endian 2D values, or None when any value is something else."""
    if wkb.null_count:
        return None
    offsets, data = wkb_layout(wkb)
    if (np.diff(offsets) < 9).any():
        return None
    starts = offsets[:-1]
    if not ((data[starts] == 1) & (data[starts + 2] == 0) & (data[starts + 3] == 0) & (data[starts + 4] == 0)).all():
        return None
    types = data[starts + 1]
    return types if ((types >= 1) & (types <= 6)).all() else None


def _binary(wkb: Any) -> pa.Array | None:
    """The batch's WKB as one Arrow binary array, or None when it is not one (a numpy array of bytes)."""
    if isinstance(wkb, pa.ChunkedArray):
        wkb = single(wkb)
    if not isinstance(wkb, pa.Array) or not (pa.types.is_binary(wkb.type) or pa.types.is_large_binary(wkb.type)):
        return None
    return wkb


def _wrapped_in_multi(wkb: pa.Array, types: np.ndarray) -> pa.Array:
    """Plain WKB values of these type codes with each single part wrapped into its Multi*."""
    header = _MULTI_HEADER.take(pa.array(types))
    return pc.binary_join_element_wise(header, wkb.cast(pa.binary()), pa.scalar(b"", pa.binary()))


def _promoted_wkb(wkb: Any, keep: np.ndarray) -> pa.Array | None:
    """The source's own WKB of the kept rows, single parts wrapped into Multi* at the byte level; None when
    a value is not plain little-endian 2D WKB (the caller then writes shapely's WKB)."""
    wkb = _binary(wkb)
    if wkb is None:
        return None
    if not keep.all():
        wkb = wkb.filter(pa.array(keep))
    types = _plain_wkb_types(wkb)
    return None if types is None else _wrapped_in_multi(wkb, types)


def _point_bounds(wkb: pa.Array) -> np.ndarray | None:
    """Bounds (x, y, x, y) of a batch of plain 2D points (21-byte WKB values), or None when a value is
    anything else or has a coordinate that is not a finite number (NaN is POINT EMPTY: GEOS counts it)."""
    n = len(wkb)
    offsets, data = wkb_layout(wkb)
    if (np.diff(offsets) != 21).any():
        return None
    xy = data[offsets[0] : offsets[-1]].reshape(n, 21)[:, 5:].copy().view("<f8")
    if not np.isfinite(xy).all():
        return None
    return np.column_stack([xy, xy])


def _proven_without_geos(
    wkb: Any, offset: int, reprojector: Reprojector, options: GeometryOptions, stats: GeometryStats
) -> Prepared | None:
    """A batch of small polygons without holes, all proven valid by simple_rings, or of points (always
    valid once their coordinates are numbers), needing no change but the Multi* promotion, skips GEOS
    entirely; None sends the batch through GEOS."""
    if options.simplify_tolerance or options.quantize_grid or not reprojector.identity:
        return None
    wkb = _binary(wkb)
    types = None if wkb is None else _plain_wkb_types(wkb)
    if types is None or not len(types):
        return None
    if (types == 1).all():
        bounds, family = _point_bounds(wkb), POINT
        if bounds is None:
            return None
    elif np.isin(types, (3, 6)).all():
        proven, bounds = simple_rings.proven_valid(wkb, types)
        family = POLYGON
        if not proven.all():
            return None
    else:
        return None
    keep = np.ones(len(wkb), dtype=bool)
    reprojector.check(bounds, keep, offset)
    stats.families.add(family)
    return Prepared(keep, _wrapped_in_multi(wkb, types))


def linearized(wkb: Any, offset: int, label: str, stats: GeometryStats) -> Any:
    """The batch with its curves stroked into straight segments (counted), or as it is when it has none."""
    try:
        wkb, count = curves.linearize_batch(wkb)
    except curves.CurvedFeatureError as exc:
        raise PermanentTaskError(
            f"{label}: feature {offset + exc.row} is a {exc.kind} that cannot be made linear: {exc.reason}"
        ) from None
    stats.linearized += count
    return wkb


def _huge_rows(wkb: pa.Array) -> np.ndarray:
    return np.flatnonzero(pc.fill_null(pc.binary_length(wkb), 0).to_numpy() > HUGE_FEATURE_BYTES)


def prepare_geometries(
    wkb: Any,
    offset: int,
    label: str,
    reprojector: Reprojector,
    options: GeometryOptions,
    stats: GeometryStats,
) -> Prepared:
    """WKB of one batch -> 2D Multi* WKB in EPSG:4326 of the rows to keep. A value above
    HUGE_FEATURE_BYTES is prepared by the repair child (prepare_huge), the rows between them here."""
    binary = _binary(wkb)
    if binary is None:  # values a caller built (not GDAL's Arrow batch): prepared by shapely alone
        values = np.asarray(wkb, dtype=object)
        if not any(v is not None and len(v) > HUGE_FEATURE_BYTES for v in values):
            return _prepare_batch(values, offset, label, reprojector, options, stats)
        binary = pa.array(list(values), type=pa.binary())
    huge = _huge_rows(binary)
    if not len(huge):
        return _prepare_batch(binary, offset, label, reprojector, options, stats)
    pieces, start = [], 0
    for row in [*huge.tolist(), len(binary)]:
        if row > start:
            pieces.append(_prepare_batch(binary.slice(start, row - start), offset + start, label, reprojector,
                                         options, stats))
        if row < len(binary):
            pieces.append(prepare_huge(value_view(binary, row), offset + row, label, reprojector, options, stats))
        start = row + 1
    return Prepared.joined(pieces)


def _child_request(options: GeometryOptions, reprojector: Reprojector | None) -> dict[str, Any]:
    """What the child does to a huge feature: every step of _prepare_batch (`reprojector` None: the feature
    was prepared in stage 1 and only its validity is left)."""
    mode = options.repair.mode
    if reprojector is None:
        return {"mode": mode}
    request: dict[str, Any] = {
        "mode": "unchecked" if options.defer_repair and mode == REPAIR else mode,
        "simplify_tolerance": options.simplify_tolerance,
        "preserve_topology": options.preserve_topology,
        "quantize_grid": options.quantize_grid,
    }
    if reprojector.transformer is not None:
        request["crs"] = reprojector.source.to_wkt()
    return request


def prepare_huge(
    data: memoryview,
    feature: int,
    label: str,
    reprojector: Reprojector | None,
    options: GeometryOptions,
    stats: GeometryStats,
) -> Prepared:
    """One feature above HUGE_FEATURE_BYTES, prepared by the repair child: the worker holds its bytes only
    (decoding it, its copies along the steps and GEOS's validity check would take hundreds of MB)."""
    what = f"{len(data) / 1e6:.0f} MB of WKB"
    answer = run_child(data, _child_request(options, reprojector), feature, what, label, options.repair)
    info, message = answer.info, answer.message
    refusals = {
        "mixed": lambda: mixed_collection(label, feature, message),
        "invalid": lambda: invalid_refused(label, feature, message),
        "unprojectable": lambda: PermanentTaskError(
            f"{label}: feature {feature} cannot be reprojected to EPSG:4326 ({message}); check the file's CRS"
            " or set converter_params.crs"
        ),
        "undecodable": lambda: PermanentTaskError(
            f"{label}: feature {feature} ({what}) has a geometry that cannot be decoded ({message}); curved"
            " geometries this large are not made linear: convert them to straight segments first"
        ),
    }
    if answer.status in refusals:
        raise refusals[answer.status]()
    if "source_bounds" in info and reprojector is not None:
        reprojector.check(np.array([info["source_bounds"]]), np.ones(1, bool), feature)
    stats.z_dropped += int(info.get("z_dropped", 0))
    stats.collections_unpacked += int(info.get("collection_unpacked", 0))
    stats.repaired += int(info.get("repaired", 0))
    stats.invalid_kept += int(info.get("invalid_kept", 0))
    if answer.status != "ok":
        stats.null_geometry += int(answer.status == "null")
        stats.collapsed += int(answer.status == "collapsed")
        return Prepared(np.zeros(1, bool), pa.array([], type=pa.binary()))
    stats.families.add(info["family"])
    wkb = one_value(answer.wkb)
    unchecked = options.defer_repair and options.repair.mode == REPAIR and reprojector is not None
    return Prepared(np.ones(1, bool), wkb, np.ones(1, bool) if unchecked else None)


def _prepare_batch(
    wkb: pa.Array | np.ndarray,
    offset: int,
    label: str,
    reprojector: Reprojector,
    options: GeometryOptions,
    stats: GeometryStats,
) -> Prepared:
    """prepare_geometries of rows that are not huge.

    When nothing changes (no Z/M, no collection, no reprojection, simplify or quantize, all valid) the
    source's WKB is reused, promoted to Multi* at the byte level: decoding is still needed for the checks,
    but the rebuild and re-encoding are not; small polygons without holes are not even decoded when
    simple_rings proves them all valid. Curved geometries are made linear first, as ogr2ogr does.
    """
    wkb = linearized(wkb, offset, label, stats)
    proven = _proven_without_geos(wkb, offset, reprojector, options, stats)
    if proven is not None:
        return proven
    raw = wkb.to_numpy(zero_copy_only=False) if hasattr(wkb, "to_numpy") else np.asarray(wkb, dtype=object)
    try:
        geoms = shapely.from_wkb(raw)
    except (shapely.errors.GEOSException, NotImplementedError):
        raise _undecodable(raw, offset, label) from None

    present = ~shapely.is_missing(geoms)
    present &= ~shapely.is_empty(geoms)
    stats.null_geometry += int((~present).sum())
    if not present.any():
        return Prepared(present, pa.array([], type=pa.binary()))

    unchanged = True
    has_z = shapely.has_z(geoms)
    if has_z.any() or shapely.has_m(geoms).any():
        stats.z_dropped += int(has_z.sum())
        geoms = shapely.force_2d(geoms)
        unchanged = False

    before = geoms
    geoms = unpack_collections(geoms, offset, label, stats)
    geoms = reprojector.apply(geoms, present, offset)
    if options.simplify_tolerance:
        geoms = shapely.simplify(geoms, options.simplify_tolerance, preserve_topology=options.preserve_topology)
    if options.quantize_grid:
        geoms = shapely.set_precision(geoms, options.quantize_grid)
    deferred = None
    if options.defer_repair and options.repair.mode == REPAIR:
        deferred = invalid_mask(geoms)  # stage 2 repairs them
    else:
        geoms = repair(geoms, offset, label, stats, options)
    unchanged = unchanged and geoms is before  # each step returns its input when it changes nothing

    alive = ~shapely.is_missing(geoms)
    alive[alive] = ~shapely.is_empty(geoms[alive])
    stats.collapsed += int((present & ~alive).sum())
    keep = present & alive
    stats.families.update(set(families_of(geoms[keep])))
    deferred = deferred[keep] if deferred is not None and deferred.any() else None
    fast = _promoted_wkb(wkb, keep) if unchanged and isinstance(wkb, pa.Array | pa.ChunkedArray) else None
    if fast is not None:
        return Prepared(keep, fast, deferred)
    geoms = promote_to_multi(geoms[keep])
    return Prepared(keep, pa.array(shapely.to_wkb(geoms), type=pa.binary()), deferred)


def repair_marked(
    wkb: pa.Array, features: pa.Array, label: str, options: GeometryOptions, stats: GeometryStats
) -> tuple[np.ndarray, pa.Array]:
    """Stage 2's repair of the rows stage 1 marked invalid (`features` holds their feature numbers, null for
    valid rows): (rows to keep, their WKB). Only the marked rows are decoded; a huge one (left unchecked by
    stage 1) is checked and repaired by the child, never decoded here."""
    wkb = _binary(wkb) if _binary(wkb) is not None else pa.array(wkb, type=pa.binary())
    if isinstance(features, pa.ChunkedArray):
        features = features.combine_chunks()
    marked = features.is_valid().to_numpy(zero_copy_only=False)
    keep = np.ones(len(wkb), dtype=bool)
    if not marked.any():
        return keep, wkb
    numbers = features.to_numpy(zero_copy_only=False)
    huge = np.zeros(len(wkb), dtype=bool)
    huge[_huge_rows(wkb)] = True
    new: dict[int, pa.Array] = {}
    for row in np.flatnonzero(marked & huge).tolist():
        done = prepare_huge(value_view(wkb, row), int(numbers[row]), label, None, options, stats)
        keep[row] = bool(done.keep[0])
        new[row] = done.wkb
    small = np.flatnonzero(marked & ~huge)
    if len(small):
        geoms = shapely.from_wkb(wkb.take(pa.array(small)).to_numpy(zero_copy_only=False))
        fixed = repair(geoms, 0, label, stats, options, numbers[small])
        alive = ~shapely.is_missing(fixed)
        alive[alive] = ~shapely.is_empty(fixed[alive])
        stats.collapsed += int((~alive).sum())
        keep[small[~alive]] = False
        values = shapely.to_wkb(promote_to_multi(fixed[alive]))
        new.update((int(row), pa.array([value], pa.binary())) for row, value in zip(small[alive], values, strict=True))
    pieces, start = [], 0
    for row in [*np.flatnonzero(marked).tolist(), len(wkb)]:  # unmarked runs as they are, marked rows replaced
        if row > start:
            pieces.append(wkb.slice(start, row - start).cast(pa.binary()))
        if row < len(wkb) and keep[row]:
            pieces.append(new[row])
        start = row + 1
    if len(pieces) == 1:  # a huge feature alone: its answer as it is, not copied by a concatenation
        return keep, pieces[0]
    return keep, pa.concat_arrays(pieces) if pieces else pa.array([], type=pa.binary())


def column_geometry_type(families: set[str]) -> str:
    """One family -> its Multi* type; several -> a generic geometry column (documented policy)."""
    if len(families) == 1:
        return MULTI_TYPE[next(iter(families))]
    return "Geometry"
