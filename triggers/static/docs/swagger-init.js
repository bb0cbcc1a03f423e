// Starts Swagger UI on the OpenAPI document named by the page (no inline script: see triggers/docs.py).
window.addEventListener('load', () => {
  const root = document.getElementById('swagger-ui');
  window.ui = SwaggerUIBundle({
    url: root.dataset.openapiUrl,
    dom_id: '#swagger-ui',
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
    layout: 'BaseLayout',
    showExtensions: true,
    showCommonExtensions: true,
  });
});
