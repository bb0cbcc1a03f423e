"""A large CSV's field types, and those of a GeoJSON file's geometry-less copy, are detected in two halves
at once (halves.py): whatever the halves hold, the types are those GDAL detects reading the whole file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.vector import csv_parts, geojson_parts, halves
from services.vector.source import csv_options

HALF = 200


def _column(kind: str) -> list[str]:
    """Values of one column over 2 * HALF records whose halves GDAL types differently (or the same)."""
    first, second = {
        "same integers": (["7"] * HALF, ["8"] * HALF),
        "integer then real": (["1"] * HALF, ["2.5"] * HALF),
        "real then integer": (["2.5"] * HALF, ["1"] * HALF),
        "integer then integer64": (["1"] * HALF, [str(2**40)] * HALF),
        "integer then text": (["1"] * HALF, ["x"] * HALF),
        "date then text": (["2021-01-02"] * HALF, ["soon"] * HALF),
        "date then datetime": (["2021-01-02"] * HALF, ["2021-01-02 10:00:00"] * HALF),
        "empty then integer": ([""] * HALF, ["3"] * HALF),
        "quoted newline in the middle": (["1"] * HALF, ['"a\nb"'] + ["2"] * (HALF - 1)),
    }[kind]
    return first + second


KINDS = ["same integers", "integer then real", "real then integer", "integer then integer64", "integer then text",
         "date then text", "date then datetime", "empty then integer", "quoted newline in the middle"]


@pytest.mark.parametrize("kind", KINDS)
def test_types_from_two_halves_are_the_whole_files(kind: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(halves, "MIN_BYTES", 0)
    values = _column(kind)
    lines = ["lat,lon,v,n"] + [f"{i % 80},{i % 170},{v},{i}" for i, v in enumerate(values)]
    path = tmp_path / "source.csv"
    path.write_text("\n".join(lines) + "\n")
    options = csv_options(path, "source.csv", {"lat_name": "lat", "lon_name": "lon"})
    starts, problem = csv_parts.record_starts(path)
    assert problem is None
    with pytest.MonkeyPatch.context() as m:  # count the reads: two halves, and a whole read only when they disagree
        reads: list[str] = []
        schema = csv_parts._schema
        m.setattr(csv_parts, "_schema", lambda p, o: reads.append(p.name) or schema(p, o))
        _, got = csv_parts._detected_types(path, starts, options)
    _, whole = csv_parts._schema(path, options)
    assert got == whole
    assert sorted(reads[:2]) == ["first_half.csv", "second_half.csv"]
    assert ("source.csv" in reads) == (kind in ("integer then text", "date then text", "date then datetime",
                                                 "empty then integer", "quoted newline in the middle"))
    assert not (tmp_path / "first_half.csv").exists() and not (tmp_path / "second_half.csv").exists()


def _json_value(text: str) -> str:
    """The CSV case's value as a JSON property value (numbers as numbers, the rest as strings)."""
    try:
        float(text)
        return text
    except ValueError:
        return json.dumps(text.strip('"'))


@pytest.mark.parametrize("kind", KINDS)
def test_geojson_copy_types_from_two_halves_are_the_whole_copys(kind: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(halves, "MIN_BYTES", 0)
    values = [v for v in _column(kind) if v != ""] if kind == "empty then integer" else _column(kind)
    records = [f'{{"type":"Feature","properties":{{"n":{i},"v":{_json_value(v)}}},"geometry":null}}'
               for i, v in enumerate(values)]
    path = tmp_path / "types.geojsons"
    path.write_bytes(b"".join(b"\x1e" + r.encode() + b"\n" for r in records))
    reads: list[str] = []
    read = geojson_parts._read_schema
    monkeypatch.setattr(geojson_parts, "_read_schema", lambda p: reads.append(p.name) or read(p))
    got = geojson_parts._types_schema(path, len(records), long_digits=False)
    meta, whole = read(path)
    assert got == [f for f in whole if f.name != (meta.get("geometry_name") or "wkb_geometry")]
    assert sorted(reads[:2]) == ["first_half.geojsons", "second_half.geojsons"]
    assert not (tmp_path / "first_half.geojsons").exists()


def test_geojson_copy_with_a_raw_separator_inside_a_record_is_typed_whole(tmp_path: Path, monkeypatch) -> None:
    """A record separator byte inside a record (invalid JSON text GDAL may still read) could be taken for
    a record's start: the copy is then typed whole, never cut there."""
    monkeypatch.setattr(halves, "MIN_BYTES", 0)
    records = [b'{"type":"Feature","properties":{"v":1},"geometry":null}'] * 50
    records[30] = b'{"type":"Feature","properties":{"v":"a\x1eb"},"geometry":null}'
    path = tmp_path / "types.geojsons"
    path.write_bytes(b"".join(b"\x1e" + r + b"\n" for r in records))
    assert geojson_parts._record_start_after(path, path.stat().st_size // 2, len(records)) is None
    clean = tmp_path / "clean.geojsons"
    clean.write_bytes(b"".join(b"\x1e" + r + b"\n" for r in [records[0]] * 50))
    middle = geojson_parts._record_start_after(clean, clean.stat().st_size // 2, 50)
    assert middle is not None and clean.read_bytes()[middle:middle + 1] == b"\x1e"


def test_geojson_copy_with_long_digit_runs_is_typed_whole(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(halves, "MIN_BYTES", 0)
    path = tmp_path / "types.geojsons"
    path.write_bytes(b"".join(b'\x1e{"type":"Feature","properties":{"v":%d},"geometry":null}\n' % v
                              for v in [1] * 20 + [2**63 - 1] * 20))
    reads: list[str] = []
    read = geojson_parts._read_schema
    monkeypatch.setattr(geojson_parts, "_read_schema", lambda p: reads.append(p.name) or read(p))
    geojson_parts._types_schema(path, 40, long_digits=True)
    assert reads == ["types.geojsons"]
