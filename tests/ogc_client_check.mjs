// What @camptocamp/ogc-client (as geonetwork-ui uses it) sees of our OGC API: prints one JSON line.
//   node tests/ogc_client_check.mjs <module path> <landing page URL> <collection id>
const [modulePath, url, collectionId] = process.argv.slice(2);
const { OgcApiEndpoint } = await import(modulePath);
const endpoint = new OgcApiEndpoint(url);
const items = await endpoint.getCollectionItems(collectionId, 7);
const info = await endpoint.getCollectionInfo(collectionId);
const tileset = await endpoint.getVectorTilesetUrl(collectionId);
console.log(JSON.stringify({
  featureCollections: await endpoint.featureCollections,
  vectorTileCollections: await endpoint.vectorTileCollections,
  items: items.map((f) => ({ id: f.id, properties: f.properties })),
  vectorTileFormats: info.vectorTileFormats,
  tileset,
}));
