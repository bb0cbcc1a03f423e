"""The map viewer (/api/vector/viewer): the page, its local assets, and headless Chromium drawing the data."""

from __future__ import annotations

import base64
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from tests.test_serving_support import add_catalog_entries, connect, create_points, create_squares, drop

pytestmark = pytest.mark.serving

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SIZE = {"width": 800, "height": 600}

# The contract's test for assets loaded from another host (script/link/img src|href, ES imports, @import).
EXTERNAL_ASSET = re.compile(
    r"""<(?:script|link|img|iframe|source)\b[^>]*?\b(?:src|href)\s*=\s*["']?((?:https?:)?//[^"'\s>]+)"""
    r"""|\bimport\s*(?:[\w{}*\s,]+from\s*)?\(?\s*["']((?:https?:)?//[^"']+)"""
    r"""|@import\s+(?:url\()?["']?((?:https?:)?//[^"')\s]+)""",
    re.I,
)

SQUARES_STYLE = {"fill_color": "#ff0000", "line_color": "#000000", "fill_opacity": 1.0, "line_width": 1}
POINTS_STYLE = {"fill_color": "#00a000", "point_radius": 5, "point_stroke_width": 0}


@pytest.fixture(scope="module")
def layers(database: str, api_server: str) -> Iterator[dict[str, str]]:
    """A small polygon table (drawn as GeoJSON) and a large point table (drawn as vector tiles)."""
    suffix = uuid.uuid4().hex[:8]
    squares, points = f"srv_view_sq_{suffix}", f"srv_view_pt_{suffix}"
    public = api_server.removesuffix("/api")
    with connect(database) as conn:
        create_squares(conn, squares)
        add_catalog_entries(conn, squares, public, SQUARES_STYLE)
        create_points(conn, points, 4321)
        add_catalog_entries(conn, points, public, POINTS_STYLE)
    yield {"squares": squares, "points": points, "api": api_server}
    with connect(database) as conn:
        drop(conn, squares)
        drop(conn, points)


def _viewer(api: str, collection: str, **params: str) -> requests.Response:
    return requests.get(f"{api}/vector/viewer", params={"collection": collection, **params}, timeout=30)


def test_viewer_page_and_its_local_assets(layers: dict[str, str]) -> None:
    api = layers["api"]
    for name in (layers["squares"], f"geo.{layers['squares']}"):
        page = _viewer(api, name)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "maplibre-gl" in page.text and "<strong id=\"count\">24</strong>" in page.text
        assert not [u for m in EXTERNAL_ASSET.findall(page.text) for u in m if u]
        assert '"fill_color":"#ff0000"' in page.text and '"mode":"geojson"' in page.text
    assert '"mode":"tiles"' in _viewer(api, layers["points"]).text
    assert '"mode":"geojson"' in _viewer(api, layers["points"], mode="geojson").text

    static = f"{api}/vector/static"
    for path, kind in (("vendor/maplibre-gl/maplibre-gl.mjs", "javascript"),
                       ("vendor/maplibre-gl/maplibre-gl-worker.mjs", "javascript"),
                       ("vendor/maplibre-gl/maplibre-gl.css", "text/css"),
                       ("vendor/maplibre-gl/LICENSE.txt", "text/plain"),
                       ("viewer.js", "javascript"), ("viewer.css", "text/css")):
        r = requests.get(f"{static}/{path}", timeout=30)
        assert r.status_code == 200 and kind in r.headers["content-type"], path
    js = requests.get(f"{static}/viewer.js", timeout=30).text
    assert not re.search(r"https?://", js.replace("https://maplibre.org", ""))


def test_unknown_or_missing_collection_is_a_readable_html_page(layers: dict[str, str]) -> None:
    api = layers["api"]
    for name in ("no_such_table", "geo.no_such_table", "public.spatial_ref_sys", "app.jobs"):
        r = _viewer(api, name)
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/html"), name
        assert "Table not found" in r.text and name in r.text
    hostile = _viewer(api, "<script>alert(1)</script>")
    assert hostile.status_code == 404 and "<script>alert(1)" not in hostile.text
    assert "&lt;script&gt;" in hostile.text
    missing = requests.get(f"{api}/vector/viewer", timeout=30)
    assert missing.status_code == 400 and missing.headers["content-type"].startswith("text/html")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.fail("headless Chromium is needed at /usr/bin/chromium: apt-get install -y chromium", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Watched:
    """A page whose console errors, page errors, failed requests and non-local requests are recorded."""

    def __init__(self, browser: Any) -> None:
        self.page = browser.new_page(viewport=SIZE, device_scale_factor=1)
        self.problems: list[str] = []
        self.urls: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"pageerror: {e}"))
        self.page.on("requestfailed", lambda r: self.problems.append(f"failed: {r.url}"))
        self.page.on("response", lambda r: r.status >= 400 and self.problems.append(f"{r.status}: {r.url}"))
        self.page.on("request", lambda r: self.urls.append(r.url))

    def open(self, url: str) -> None:
        self.page.goto(url)
        # polled from here: wait_for_function evaluates its predicate with eval, which the page's CSP forbids
        deadline = time.monotonic() + 20
        while (state := self.page.evaluate("document.body.dataset.state")) == "loading" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert state == "ready", f"viewer state {state}: {self.page.inner_text('#status')}"


def wait_until(page: Any, expression: str, timeout: float = 30.0) -> None:
    """Poll a page expression from here until it is truthy: Playwright's wait_for_function evaluates its
    predicate with eval, which the pages' Content-Security-Policy forbids."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout}s: {expression}")
        time.sleep(0.1)


def pixels(browser: Any, png: bytes) -> np.ndarray:
    """The screenshot as an (h, w, 4) uint8 array, decoded by the browser (no imaging library needed)."""
    page = browser.new_page()
    try:
        w, h, raw = page.evaluate(
            """async (b64) => {
                const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                const bmp = await createImageBitmap(new Blob([bytes], { type: 'image/png' }));
                const canvas = new OffscreenCanvas(bmp.width, bmp.height);
                const ctx = canvas.getContext('2d');
                ctx.drawImage(bmp, 0, 0);
                const data = ctx.getImageData(0, 0, bmp.width, bmp.height).data;
                let s = '';
                for (let i = 0; i < data.length; i += 0x8000) {
                    s += String.fromCharCode.apply(null, data.subarray(i, i + 0x8000));
                }
                return [bmp.width, bmp.height, btoa(s)];
            }""",
            base64.b64encode(png).decode(),
        )
    finally:
        page.close()
    return np.frombuffer(base64.b64decode(raw), dtype=np.uint8).reshape(h, w, 4)


def project(page: Any, lon: float, lat: float) -> tuple[float, float]:
    """Screen position of a lon/lat in the viewer's map."""
    x, y = page.evaluate("([lon, lat]) => { const p = window.viewerMap.project([lon, lat]); return [p.x, p.y]; }",
                         [lon, lat])
    return x, y


def near(img: np.ndarray, rgb: tuple[int, int, int], tol: int = 40) -> np.ndarray:
    return (np.abs(img[..., :3].astype(int) - np.array(rgb)) <= tol).all(axis=-1)


def test_browser_draws_polygons_from_geojson_with_render_params(browser: Any, layers: dict[str, str]) -> None:
    w = Watched(browser)
    try:
        w.open(f"{layers['api']}/vector/viewer?collection={layers['squares']}")
        page = w.page
        assert page.inner_text("#count") == "24"
        assert page.evaluate("window.viewerMap.getSource('data').type") == "geojson"
        img = pixels(browser, page.screenshot())
        background = tuple(int(v) for v in img[SIZE["height"] - 40, SIZE["width"] // 2, :3])
        red = near(img, (255, 0, 0))
        assert red.sum() > 0.10 * red.size, f"only {red.sum()} red pixels"
        # red exactly where the squares are, background in the gaps between them
        for lon, lat, want_red in ((10.75, 6.75, True), (0.75, 0.75, True), (1.75, 1.75, False), (9.8, 3.8, False)):
            x, y = project(page, lon, lat)
            px = img[round(y), round(x), :3]
            if want_red:
                assert near(px[None, None, :], (255, 0, 0))[0, 0], (lon, lat, px)
            else:
                assert tuple(int(v) for v in px) == background, (lon, lat, px, background)
        # the map fits the table's extent (lon 0..11.5, lat 0..7.5)
        west, south, east, north = page.evaluate("window.viewerMap.getBounds().toArray().flat()")
        assert west <= 0 and south <= 0 and east >= 11.5 and north >= 7.5 and east - west < 40

        # a click shows the feature's attributes
        x, y = project(page, 4.75, 2.75)
        page.mouse.click(x, y)
        popup = page.wait_for_selector(".maplibregl-popup", timeout=5000)
        text = popup.inner_text()
        assert "cell 2-1" in text and "area_km2" in text and "31.5" in text
        assert w.problems == []
        assert all(u.startswith(layers["api"].removesuffix("/api")) or u.startswith("data:") for u in w.urls)
    finally:
        w.page.close()


def test_browser_draws_a_large_table_from_vector_tiles(browser: Any, layers: dict[str, str]) -> None:
    w = Watched(browser)
    try:
        w.open(f"{layers['api']}/vector/viewer?collection={layers['points']}")
        page = w.page
        assert page.inner_text("#count") == "4,321"
        assert page.evaluate("window.viewerMap.getSource('data').type") == "vector"
        assert any("/tiles/WebMercatorQuad/" in u and u.rsplit("/", 1)[-1].isdigit() for u in w.urls)
        img = pixels(browser, page.screenshot())
        green = near(img, (0, 160, 0), tol=30)
        assert green.sum() > 0.05 * green.size, f"only {green.sum()} green pixels"
        # the points fill the table's extent, not the corners outside it
        (x0, y0), (x1, y1) = page.evaluate(
            "[[5, 55], [15, 45]].map((c) => { const p = window.viewerMap.project(c); return [p.x, p.y]; })")
        inside = green[round(y0):round(y1), round(x0):round(x1)]
        assert inside.mean() > 0.2 and green.sum() - inside.sum() < 0.01 * green.size

        # click a known point: a popup with its attributes
        first = requests.get(f"{layers['api']}/features/collections/{layers['points']}/items", params={"limit": 1},
                             timeout=30).json()["features"][0]
        x, y = project(page, *first["geometry"]["coordinates"])
        page.mouse.click(x, y)
        popup = page.wait_for_selector(".maplibregl-popup", timeout=5000)
        assert "cat" in popup.inner_text() and "observed" in popup.inner_text()
        assert w.problems == []
    finally:
        w.page.close()
