// Map viewer of one ingested table. Everything it loads comes from this API: the map library
// is served from /api/vector/static, the data from /api/features (GeoJSON for small tables,
// vector tiles for large ones). No basemap, glyphs or sprites: nothing is fetched elsewhere.
import { Map, NavigationControl, Popup, ScaleControl } from './vendor/maplibre-gl/maplibre-gl.mjs';

const cfg = JSON.parse(document.getElementById('viewer-config').textContent);
const statusEl = document.getElementById('status');
const style = cfg.style;

function setState(state, message) {
  document.body.dataset.state = state;
  if (message !== undefined) statusEl.textContent = message;
}

// Adds the read key when the page was opened with ?code= (PROTECT_READS deployments). The key
// comes from the page's own address: the server never writes it into the page.
const readKey = cfg.keyed ? new URLSearchParams(window.location.search).get('code') : null;
function withKey(url) {
  if (!readKey) return url;
  const u = new URL(url, window.location.href);
  u.searchParams.set('code', readKey);
  return u.toString().replace(/%7B/g, '{').replace(/%7D/g, '}');
}

async function getJSON(url, accept) {
  const response = await fetch(withKey(url), { headers: { Accept: accept } });
  if (!response.ok) throw new Error(`${url} answered ${response.status}`);
  return response.json();
}

async function dataSource() {
  if (cfg.mode === 'geojson') {
    const data = await getJSON(cfg.items_url_all, 'application/geo+json');
    return { source: { type: 'geojson', data }, sourceLayer: null };
  }
  const tj = await getJSON(cfg.tilejson_url, 'application/json');
  const layer = (tj.vector_layers && tj.vector_layers[0] && tj.vector_layers[0].id) || 'default';
  const source = {
    type: 'vector',
    tiles: tj.tiles.map(withKey),
    minzoom: tj.minzoom || 0,
    maxzoom: Math.min(tj.maxzoom === undefined ? 16 : tj.maxzoom, 16),
  };
  if (tj.bounds) source.bounds = tj.bounds;
  return { source, sourceLayer: layer };
}

const POLYGONS = ['Polygon', 'MultiPolygon'];
const POINTS = ['Point', 'MultiPoint'];

function dataLayers(sourceLayer) {
  const base = sourceLayer ? { source: 'data', 'source-layer': sourceLayer } : { source: 'data' };
  const isType = (types) => ['in', ['geometry-type'], ['literal', types]];
  return [
    {
      id: 'data-fill', type: 'fill', ...base, filter: isType(POLYGONS),
      paint: { 'fill-color': style.fill_color, 'fill-opacity': style.fill_opacity },
    },
    {
      id: 'data-line', type: 'line', ...base, filter: ['!', isType(POINTS)],
      paint: { 'line-color': style.line_color, 'line-width': style.line_width, 'line-opacity': style.line_opacity },
    },
    {
      id: 'data-point', type: 'circle', ...base, filter: isType(POINTS),
      paint: {
        'circle-color': style.point_color,
        'circle-radius': style.point_radius,
        'circle-opacity': Math.max(style.fill_opacity, 0.8),
        'circle-stroke-color': style.point_stroke_color,
        'circle-stroke-width': style.point_stroke_width,
      },
    },
  ];
}

function propertiesTable(feature) {
  const table = document.createElement('table');
  table.className = 'popup-table';
  const props = feature.properties || {};
  const rows = 'id' in props || feature.id === undefined ? Object.entries(props) : [['id', feature.id], ...Object.entries(props)];
  for (const [key, value] of rows) {
    if (value === undefined) continue;
    const tr = table.insertRow();
    const th = document.createElement('th');
    th.textContent = key;
    tr.appendChild(th);
    const td = tr.insertCell();
    td.textContent = value === null ? '' : (typeof value === 'object' ? JSON.stringify(value) : String(value));
  }
  return table;
}

function startView() {
  const [x0, y0, x1, y1] = cfg.bbox || [-180, -85, 180, 85];
  if (x1 - x0 < 1e-9 && y1 - y0 < 1e-9) return { center: [x0, y0], zoom: 14 };
  return { bounds: [[x0, y0], [x1, y1]], fitBoundsOptions: { padding: 40, maxZoom: 17 } };
}

async function main() {
  document.documentElement.style.setProperty('--fill', style.fill_color);
  document.documentElement.style.setProperty('--line', style.line_color);
  const map = new Map({
    container: 'map',
    style: {
      version: 8,
      sources: {},
      layers: [{ id: 'background', type: 'background', paint: { 'background-color': style.background_color } }],
    },
    attributionControl: { compact: true },
    ...startView(),
  });
  window.viewerMap = map;
  map.addControl(new NavigationControl({ showCompass: false }), 'top-right');
  map.addControl(new ScaleControl(), 'bottom-left');
  map.on('error', (event) => setState('error', `Map error: ${event.error ? event.error.message : 'unknown'}`));

  const { source, sourceLayer } = await dataSource();
  await new Promise((resolve) => (map.loaded() ? resolve() : map.once('load', resolve)));
  map.addSource('data', source);
  const layers = dataLayers(sourceLayer);
  for (const layer of layers) map.addLayer(layer);
  const layerIds = layers.map((l) => l.id);

  map.on('click', (event) => {
    const hits = map.queryRenderedFeatures(event.point, { layers: layerIds });
    if (!hits.length) return;
    new Popup({ maxWidth: '320px' }).setLngLat(event.lngLat).setDOMContent(propertiesTable(hits[0])).addTo(map);
  });
  for (const id of layerIds) {
    map.on('mouseenter', id, () => { map.getCanvas().style.cursor = 'pointer'; });
    map.on('mouseleave', id, () => { map.getCanvas().style.cursor = ''; });
  }
  map.once('idle', () => setState('ready', 'Click a feature to see its attributes.'));
}

main().catch((error) => setState('error', `Could not draw the layer: ${error.message}`));
