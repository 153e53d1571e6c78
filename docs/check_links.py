"""Check the links of the built documentation: ``python docs/check_links.py [docs/_build/html]``.

Every ``href`` and ``src`` in every HTML page that points inside the site must name an existing
file, and its ``#fragment``, if any, an element ``id`` (or ``<a name>``) in the target page.
External links (``http(s)://``, ``mailto:`` ...) cannot be reached from CI, which has no
internet: they are counted and listed with ``--list-external``, not fetched. Sphinx's own
``linkcheck`` builder is for those, on a machine with a network:
``python -m sphinx -b linkcheck docs docs/_build/linkcheck``.
"""

from __future__ import annotations

import argparse
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

LINK_ATTRS = {"href", "src"}


class _Page(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str]] = []  # (tag, url)
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if value is None:
                continue
            if name in LINK_ATTRS:
                self.links.append((tag, value))
            elif name == "id" or (tag == "a" and name == "name"):
                self.ids.add(value)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8", errors="replace"))
    return page


def check_site(root: Path) -> tuple[list[str], set[str], int]:
    """Broken internal links (``page: url (why)``), external URLs, internal links checked."""
    root = root.resolve()
    pages = sorted(root.rglob("*.html"))
    if not pages:
        raise SystemExit(f"no HTML pages under {root}: build the docs first (make docs)")
    parsed = {p: _parse(p) for p in pages}
    broken, external, checked = [], set(), 0
    for page, info in parsed.items():
        for tag, url in info.links:
            parts = urlsplit(url)
            if parts.scheme in ("data", "javascript"):
                continue
            if parts.scheme or parts.netloc:
                external.add(url)
                continue
            if tag == "link" and not parts.path and not parts.fragment:
                continue
            checked += 1
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            if root not in target.parents and target != root:
                broken.append(f"{page.relative_to(root)}: {url} (outside the site)")
            elif not target.is_file():
                broken.append(f"{page.relative_to(root)}: {url} (no such file)")
            elif parts.fragment and target.suffix == ".html":
                ids = (parsed.get(target) or _parse(target)).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{page.relative_to(root)}: {url} (no anchor)")
    return broken, external, checked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", nargs="?", type=Path, default=Path("docs/_build/html"))
    parser.add_argument("--list-external", action="store_true", help="print external links")
    args = parser.parse_args(argv)
    broken, external, checked = check_site(args.root)
    for line in broken:
        print(f"broken link: {line}")
    if args.list_external:
        for url in sorted(external):
            print(f"external (not checked): {url}")
    pages = len(list(args.root.rglob("*.html")))
    print(
        f"{pages} pages, {checked} internal links checked, {len(broken)} broken; "
        f"{len(external)} distinct external links not checked (no network in CI)"
    )
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
