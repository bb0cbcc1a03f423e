"""tipg's HTML pages, made safe to serve: every value escaped, no script, nothing from a CDN.

tipg renders its pages with a Jinja environment that does not autoescape, so a feature
property `<img src=x onerror=...>` became markup in /items?f=html. Its templates also load
jQuery, Bootstrap and Leaflet from CDNs and draw their maps with inline scripts, which the
Content-Security-Policy of this API forbids. Rather than fork each template, this loader
reads tipg's own templates and drops what cannot run here (script elements, external
stylesheets, style elements and attributes, the map placeholder), and the environment
autoescapes everything. The pages keep their tables, links and paging (the page numbers are
computed here, the page-size menu is wired by static/pages.js); the map of a table is the
viewer's job (/api/vector/viewer).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import jinja2
from starlette.templating import Jinja2Templates

_DROP = [
    re.compile(r"<script\b.*?</script>", re.S | re.I),
    re.compile(r"<style\b.*?</style>", re.S | re.I),
    re.compile(r"<link\b[^>]*\bhref=[\"']https?://[^>]*>", re.I),
    re.compile(r"<div id=\"map\"[^>]*>.*?</div>", re.S | re.I),
    re.compile(r"\sstyle=\"[^\"]*\"", re.I),
]
STYLESHEET = (
    '<link rel="stylesheet" href="{{ template.api_root }}/../vector/static/pages.css" />\n'
    '    <script src="{{ template.api_root }}/../vector/static/pages.js" defer></script>\n  </head>'
)
# What tipg's inline paging script computed, computed here (the page-size menu is wired by pages.js)
_LIMIT = "((template.params.limit or 10)|int, 1)|max"
_OFFSET = "(template.params.offset or 0)|int"
_FILLED = {
    '<span id="current_page"></span>': f'<span id="current_page">{{{{ ({_OFFSET} // {_LIMIT}) + 1 }}}}</span>',
    '<span id="total_pages"></span>': (
        f'<span id="total_pages">{{{{ [((response.numberMatched or 0) + {_LIMIT} - 1) // {_LIMIT}, 1]|max }}}}</span>'
    ),
}


def clean(source: str) -> str:
    """A tipg template without scripts, inline styles and CDN links; our stylesheet in its head."""
    for pattern in _DROP:
        source = pattern.sub("", source)
    for empty, filled in _FILLED.items():
        source = source.replace(empty, filled)
    return source.replace("</head>", STYLESHEET, 1)


class SafeTipgLoader(jinja2.PackageLoader):
    """tipg's templates, cleaned as they are loaded."""

    def __init__(self) -> None:
        super().__init__("tipg", "templates")

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        source, filename, uptodate = super().get_source(environment, template)
        return clean(source), filename, uptodate


def tipg_templates() -> Jinja2Templates:
    """Templates for tipg's Endpoints(templates=...): cleaned and autoescaped."""
    return Jinja2Templates(env=jinja2.Environment(loader=SafeTipgLoader(), autoescape=True))
