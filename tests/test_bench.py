"""`python -m torch_pconv bench`: the memory meter on cases with a known answer, and a smoke run
on a tiny config that checks the JSON, CSV and PNG it writes. No timing assertions."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from torch_pconv import bench
from torch_pconv.__main__ import main

FLOAT = 4  # bytes of a float32


def test_live_bytes_counts_known_allocations():
    n = 1000
    with bench.LiveBytes("cpu") as meter:
        kept = torch.empty(n)  # made under the meter, freed inside the window
        with meter.window("known"):
            a = torch.empty(2 * n)  # live: 2n
            b = torch.empty(3 * n)  # 5n, the peak
            del a, kept  # 2n (kept's n freed)
            c = torch.empty(n // 2)  # 2.5n
    assert meter.results["known"] == (5 * n * FLOAT, (3 * n + n // 2 - n) * FLOAT)
    del b, c


def test_live_bytes_sees_temporaries_inside_an_expression():
    n = 4096
    x = torch.randn(n)
    with bench.LiveBytes("cpu") as meter, meter.window("expr"):
        y = (x + x) * x  # the temporary x + x and the result are live together
    assert meter.results["expr"] == (2 * n * FLOAT, n * FLOAT)
    del y


def test_live_bytes_held_by_the_graph():
    # sin saves its input: x * x stays alive with the graph, next to the output.
    n = 4096
    with bench.LiveBytes("cpu") as meter:
        x = torch.randn(n, requires_grad=True)
        with meter.window("graph"):
            out = (x * x).sin()
        with meter.window("no graph"):
            detached = (x.detach() * x.detach()).sin()
    assert meter.results["graph"] == (2 * n * FLOAT, 2 * n * FLOAT)
    assert meter.results["no graph"] == (2 * n * FLOAT, n * FLOAT)
    del out, detached


def test_live_bytes_of_a_convolution_holds_its_output():
    # nn.Conv2d keeps its input and weight (already live) for the backward: the forward holds
    # exactly its output, and frees every temporary it makes.
    settings = bench.Settings()
    config = bench.Config("tiny", 2, 3, 5, 3, 1, 12)
    memory = bench.measure_memory(bench.IMPLS[0], config, settings)
    output = 2 * 5 * 12 * 12 * FLOAT
    assert memory["held forward→backward"] == output
    assert memory["peak forward"] >= output and memory["peak inference"] >= output
    assert memory["peak forward+backward"] > output


def _v011_wheel(tmp_path):
    """A stand-in for torch-pconv 0.1.1's wheel (a zip with torch_pconv/pconv.py): the loader's
    contract, without the real package."""
    import zipfile

    source = (
        "from torch import nn\n"
        "class PConv2d(nn.Module):\n"
        "    def __init__(self, *args, **kwargs):\n"
        "        super().__init__()\n"
        "        self.args = args\n"
    )
    path = tmp_path / "torch_pconv-0.1.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("torch_pconv/pconv.py", source)
    return path


def test_load_v011_reads_pconv_from_a_wheel(tmp_path):
    cls = bench.load_v011(_v011_wheel(tmp_path))
    assert cls.__name__ == "PConv2d" and cls.__module__ == "torch_pconv_v011"
    assert cls(1, 2).args == (1, 2)


TINY = ["--in-channels", "3", "--out-channels", "4", "--kernel-size", "3", "--size", "12", "--batch", "2"]


def test_bench_command_writes_json_csv_png(tmp_path, capsys):
    # Two layers: the encoder path, with the mask carried from layer to layer.
    pytest.importorskip("matplotlib")
    args = ["bench", *TINY, "--layers", "2", "--repeats", "2", "--warmup", "0", "--out", str(tmp_path)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "custom" in printed and "×conv" in printed and "memory: bytes of live tensors" in printed

    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["environment"]["torch"] == torch.__version__
    assert data["configs"][0]["layers"] == 2
    names = {r["implementation"] for r in data["results"]}
    assert {"nn.Conv2d", "PConv2d", "reference multi_channel", "reference"} <= names
    times = [r for r in data["results"] if r["metric"].startswith("time ")]
    assert len(times) == len(names) * len(bench.MODES)
    assert all(len(r["samples_ms"]) == 2 and r["q1"] <= r["value"] <= r["q3"] for r in times)
    memory = [r for r in data["results"] if r["metric"].startswith("memory ")]
    assert len(memory) == len(names) * len(bench.MEMORY) and all(r["value"] > 0 for r in memory)
    conv = [r for r in data["results"] if r["implementation"] == "nn.Conv2d" and "ratio_to_conv" in r]
    assert all(r["ratio_to_conv"] == 1.0 for r in conv)
    errors = [r["value"] for r in data["results"] if r["metric"] == "relative error vs reference"]
    assert errors and max(errors) < 1e-5  # every row computes the same output

    with (tmp_path / "bench.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(data["results"])
    assert {float(r["value"]) for r in rows} == {float(r["value"]) for r in data["results"]}

    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_without_matplotlib_skips_the_chart(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    config = bench.Config("tiny", 1, 2, 3, 3, 1, 8, holes=None)
    report, recs = bench.run_bench([config], bench.Settings(repeats=1, warmup=0), tmp_path, progress=False)
    assert "matplotlib is not installed" in report
    assert (tmp_path / "bench.json").exists() and (tmp_path / "bench.csv").exists()
    assert not (tmp_path / "bench.png").exists()
    # mask None: the (B, H, W)-mask row and torch-pconv 0.1.1 do not apply.
    assert {r["implementation"] for r in recs} == {
        "nn.Conv2d",
        "PConv2d multi_channel",
        "PConv2d",
        "reference multi_channel",
        "reference",
    }


def test_configs_from_options():
    parser = __import__("argparse").ArgumentParser()
    bench.add_arguments(parser)
    assert [c.name for c in bench.selected_configs(parser.parse_args([]))] == list(bench.CONFIGS)
    (v011,) = bench.selected_configs(parser.parse_args(["--configs", "v011", "--full"]))
    assert v011.batch == bench.V011_FULL_BATCH and v011.kernel_size == 9
    (custom,) = bench.selected_configs(parser.parse_args(["--kernel-size", "5", "--holes", "0"]))
    assert (custom.name, custom.kernel_size, custom.padding, custom.holes) == ("custom", 5, 2, None)
    batches = {c.batch for c in bench.selected_configs(parser.parse_args(["--batch", "3"]))}
    assert batches == {3}
