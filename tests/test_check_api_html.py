"""CI's check of the built API page (.ci/check_api_html.py): what it rejects and what it lets by."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "check_api_html.py"
_spec = importlib.util.spec_from_file_location("check_api_html", _SCRIPT)
assert _spec is not None and _spec.loader is not None
check_api_html = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_api_html)

CLEAN = """<html><body>
<nav><ul><li><a href="#torch_pconv.PConv2d" class="md-nav__link">PConv2d</a></li>
<li><a href="#whole-models" class="md-nav__link">Whole models</a></li></ul></nav>
<article>
<h2 id="torch_pconv.PConv2d" class="doc doc-heading"><code>torch_pconv.PConv2d</code></h2>
<p>Input: <code>(B, C_in, H, W)</code>.</p>
<pre><code>&gt;&gt;&gt; _ = torch.manual_seed(0)</code></pre>
</article>
<script>var __md_scope = new URL("..", location); __md_get("__palette")</script>
<input id="__drawer" type="checkbox"><label for="__drawer"></label>
</body></html>"""


def test_a_page_of_public_names_passes():
    assert check_api_html.problems(CLEAN) == ([], 2)


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        # A module dunder listed as a member, in the table of contents and as a heading.
        ('<a href="#torch_pconv.convert.__all__">__all__</a>', ["anchor #torch_pconv.convert.__all__"]),
        ('<h3 id="torch_pconv.PConvError.__weakref__">weakref</h3>', ["anchor #torch_pconv.PConvError.__weakref__"]),
        # A class's private base, and a private module in a dotted name.
        ("<p>Bases: <code>torch_pconv.pconv._PartialConvNd</code></p>", ["text torch_pconv.pconv._PartialConvNd"]),
        ("<p>_PartialConvNd</p>", ["text _PartialConvNd"]),
        ("<p>__module__ = 'torch_pconv._masks'</p>", ["text torch_pconv._masks"]),
    ],
)
def test_a_dunder_entry_or_a_private_name_fails(html, expected):
    assert check_api_html.problems(CLEAN.replace("</article>", html + "</article>"))[0] == expected


def test_a_bare_dunder_in_an_example_passes():
    html = "<pre><code>&gt;&gt;&gt; type(layer).__name__</code></pre></article>"
    assert check_api_html.problems(CLEAN.replace("</article>", html)) == ([], 2)


def test_the_command_line_exits_1_on_a_failure_and_0_on_a_pass(tmp_path, capsys):
    good, bad = tmp_path / "good.html", tmp_path / "bad.html"
    good.write_text(CLEAN, encoding="utf-8")
    bad.write_text(CLEAN.replace("PConv2d</code></h2>", "PConv2d</code></h2><p>_PartialConvNd</p>"), encoding="utf-8")
    assert check_api_html.main([str(good)]) == 0
    assert check_api_html.main([str(bad)]) == 1
    assert "text _PartialConvNd" in capsys.readouterr().out
    assert check_api_html.main([]) == 2
