"""The inpainting extra stays optional: torch_pconv never imports it, and a missing dependency
gives one line that names the extra. One fresh interpreter checks it all (slow: it imports torch)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = """
import importlib, json, sys
import torch_pconv, torch_pconv.holes, torch_pconv.__main__
names = ('PIL', 'pytorch_msssim', 'torch_pconv.inpainting', 'torchvision')
report = {'loaded': sorted(m for m in names if m in sys.modules), 'errors': {}}
for missing in ('PIL', 'pytorch_msssim'):
    for name in [m for m in sys.modules if m.startswith('torch_pconv.inpainting')]:
        del sys.modules[name]
    saved = sys.modules.get(missing)
    sys.modules[missing] = None
    try:
        importlib.import_module('torch_pconv.inpainting')
    except ImportError as error:
        report['errors'][missing] = str(error)
    finally:
        sys.modules.pop(missing)
        if saved is not None:
            sys.modules[missing] = saved
print(json.dumps(report))
"""


@pytest.mark.slow
def test_extra_is_optional_and_named_when_missing():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["loaded"] == []  # import torch_pconv (and its command line) loads none of them
    assert set(report["errors"]) == {"PIL", "pytorch_msssim"}
    for missing, message in report["errors"].items():
        assert "\n" not in message
        assert message.startswith(f"torch_pconv.inpainting needs {'Pillow' if missing == 'PIL' else 'pytorch-msssim'}")
        assert message.endswith('pip install "torch_pconv[inpainting]"')
