// The OGC API HTML pages (tipg's templates, served without their inline scripts): the page-size menu.
document.addEventListener('DOMContentLoaded', () => {
  const menu = document.getElementById('limit');
  if (!menu) return;
  menu.addEventListener('change', () => {
    const params = new URLSearchParams(window.location.search);
    params.set('limit', menu.value);
    params.delete('offset');
    window.location.search = params.toString();
  });
});
