"""The inpainting extra stays optional: torch_pconv never imports it, and a missing dependency
gives one line that names the extra."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)


def test_import_torch_pconv_loads_no_inpainting_dependency():
    result = _run(
        "import sys, torch_pconv, torch_pconv.holes, torch_pconv.__main__\n"
        "names = ('PIL', 'pytorch_msssim', 'torch_pconv.inpainting', 'torchvision')\n"
        "print(sorted(m for m in names if m in sys.modules))"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("missing", ["PIL", "pytorch_msssim"])
def test_missing_dependency_names_the_extra(missing):
    result = _run(f"import sys\nsys.modules[{missing!r}] = None\nimport torch_pconv.inpainting")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: torch_pconv.inpainting needs ")
    assert last.endswith('pip install "torch_pconv[inpainting]"')


def test_cli_without_the_extra():
    code = "import sys\nsys.modules['PIL'] = None\nfrom torch_pconv.__main__ import main\nmain(['inpaint', '--help'])"
    result = _run(code)
    assert 'pip install "torch_pconv[inpainting]"' in result.stderr
