"""Check the built API page shows the public API alone: no dunder and no private name.

Usage: python .ci/check_api_html.py SITE/api/index.html

Fails on an entry for a dunder or a private name: an anchor of the page (its table of contents
and its headings link to them) with a part that starts with an underscore, such as
``torch_pconv.convert.__all__`` or ``torch_pconv.PConvError.__weakref__``. Fails on a private
name in the page's text: one with a leading underscore, such as ``_PartialConvNd``, or a dotted
name with a part that has one, such as ``torch_pconv.pconv._PartialConvNd`` or
``torch_pconv._masks``. A bare dunder in the text (an example's ``type(x).__name__``) is Python,
not an entry, and passes. Scripts and styles are not read. Exit status 1 lists each name found;
0 says how many anchors were checked.
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path

# An anchor with a part that starts with an underscore: "torch_pconv.convert.__all__".
PRIVATE_ANCHOR = re.compile(r"(?:^|\.)_")
# A private name in the text: "_Name", or a dotted name with a part that starts with an underscore,
# "torch_pconv._masks", "torch_pconv.convert.__all__". Not "C_in" (the underscore is inside a
# word), "_ = f()" (no name) or a bare dunder such as "__name__".
PRIVATE_NAME = re.compile(r"(?<![\w.])(?:(?:[A-Za-z]\w*\.)+_+|_(?!_))[A-Za-z]\w*")
HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}


class _Page(HTMLParser):
    """The anchors (heading ids and in-page links) and the visible text of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[str] = []
        self.text: list[str] = []
        self._hidden = 0  # depth inside <script> and <style>

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._hidden += 1
        values = dict(attrs)
        if tag in HEADINGS and values.get("id"):
            self.anchors.append(values["id"] or "")
        href = values.get("href") or ""
        if tag == "a" and href.startswith("#") and len(href) > 1:
            self.anchors.append(href[1:])

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._hidden:
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.text.append(data)


def problems(html: str) -> tuple[list[str], int]:
    """Each dunder or private name the page shows, with where it shows it (empty if none), and
    the number of anchors checked."""
    page = _Page()
    page.feed(html)
    page.close()
    anchors = list(dict.fromkeys(page.anchors))
    found = [f"anchor #{anchor}" for anchor in anchors if PRIVATE_ANCHOR.search(anchor)]
    found += [f"text {name}" for name in dict.fromkeys(PRIVATE_NAME.findall(" ".join(page.text)))]
    return found, len(anchors)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python .ci/check_api_html.py SITE/api/index.html", file=sys.stderr)
        return 2
    found, anchors = problems(Path(argv[0]).read_text(encoding="utf-8"))
    if found:
        print(f"FAIL: {argv[0]} shows {len(found)} names that are not public API:")
        for problem in found:
            print(f"  {problem}")
        return 1
    print(f"{argv[0]}: {anchors} anchors and the text, no dunder and no private name")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
