"""`python -m torch_pconv bench`: the memory meter on cases with a known answer, the interleaving and
the ratios (with their quartiles) on synthetic samples, the other builds' loaders, the compiled
config's fallbacks, the allocator's setting, the progress lines, and a smoke run on tiny configs that
checks the JSON, CSV and PNG it writes. No assertion depends on how fast anything ran.

No test here changes the test process's allocator: the C library's mallopt is replaced by a fake
that records its calls (one test runs the real one, in a process of its own)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import torch_pconv
from torch_pconv.__main__ import main
from torch_pconv._masks import MaskLayout
from torch_pconv._progress import Progress
from torch_pconv.bench import allocator, cli, impls
from torch_pconv.bench.configs import CONFIGS, MEMORY, MODES, Config, Settings
from torch_pconv.bench.files import CSV_FIELDS, write_chart
from torch_pconv.bench.memory import LiveBytes, measure_memory
from torch_pconv.bench.records import environment, records
from torch_pconv.bench.report import format_report
from torch_pconv.bench.run import Row, Run, run_bench
from torch_pconv.bench.timing import Samples, time_interleaved

FLOAT = 4  # bytes of a float32
ROOT = Path(__file__).resolve().parents[1]
TINY = Config("tiny", 2, 3, 4, 3, 1, 12)  # one layer, 50 % holes
FAST = Settings(repeats=2, warmup=0)


def _row(name: str) -> impls.Impl:
    return next(impl for impl in impls.IMPLS if impl.name == name)


_real_glibc = allocator._glibc  # before the fixture below replaces it


class FakeLibc:
    """glibc as the allocator module sees it, with a mallopt that records its calls and accepts them."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, option: int, value: int) -> int:
        self.calls.append((option, value))
        return 1


@pytest.fixture(autouse=True)
def libc(monkeypatch: pytest.MonkeyPatch) -> FakeLibc:
    """The fake C library every test here sees, and the allocator's setting restored after each."""
    fake = FakeLibc()
    monkeypatch.setattr(allocator, "_glibc", lambda: fake)
    monkeypatch.setattr(allocator, "_setting", allocator._setting)
    return fake


# ----------------------------------------------------------------------------------------------
# The memory meter


def test_live_bytes_counts_known_allocations() -> None:
    n = 1000
    with LiveBytes("cpu") as meter:
        kept = torch.empty(n)  # made under the meter, freed inside the window
        with meter.window("known"):
            a = torch.empty(2 * n)  # live: 2n
            b = torch.empty(3 * n)  # 5n, the peak
            del a, kept  # 2n (kept's n freed)
            c = torch.empty(n // 2)  # 2.5n
    assert meter.results["known"] == (5 * n * FLOAT, (3 * n + n // 2 - n) * FLOAT)
    del b, c


def test_live_bytes_sees_temporaries_inside_an_expression() -> None:
    n = 4096
    x = torch.randn(n)
    with LiveBytes("cpu") as meter, meter.window("expr"):
        y = (x + x) * x  # the temporary x + x and the result are live together
    assert meter.results["expr"] == (2 * n * FLOAT, n * FLOAT)
    del y


def test_live_bytes_held_by_the_graph() -> None:
    # sin saves its input: x * x stays alive with the graph, next to the output.
    n = 4096
    with LiveBytes("cpu") as meter:
        x = torch.randn(n, requires_grad=True)
        with meter.window("graph"):
            out = (x * x).sin()
        with meter.window("no graph"):
            detached = (x.detach() * x.detach()).sin()
    assert meter.results["graph"] == (2 * n * FLOAT, 2 * n * FLOAT)
    assert meter.results["no graph"] == (2 * n * FLOAT, n * FLOAT)
    del out, detached


def test_live_bytes_silences_the_profiler_and_nothing_else(capfd: pytest.CaptureFixture[str]) -> None:
    with LiveBytes("cpu") as meter, meter.window("w"):
        os.write(2, b"a line of the caller's\n")
        torch.empty(10)
    err = capfd.readouterr().err
    assert "profiler_start" not in err and "profiler_stop" not in err and "USDT" not in err
    assert "a line of the caller's" in err


def _memory(name: str, config: Config, metrics: tuple[str, ...] = MEMORY) -> dict[str, int]:
    net, inputs = impls.build_network(_row(name), config, FAST), impls.make_inputs(config, FAST)
    return measure_memory(net, inputs, inputs.masks[_row(name).mask], metrics, "cpu")


def test_memory_of_a_convolution_holds_its_output() -> None:
    # nn.Conv2d keeps its input and weight (already live) for the backward: the forward holds
    # exactly its output, with or without a caller's saved-tensor hooks, and frees every temporary.
    memory = _memory("nn.Conv2d", TINY)
    output = 2 * 4 * 12 * 12 * FLOAT
    assert memory["held forward→backward"] == memory["held forward→backward, saved-tensor hooks"] == output
    assert memory["peak forward"] >= output and memory["peak inference"] >= output
    assert memory["peak forward+backward"] > output
    assert list(memory) == list(MEMORY)
    assert list(_memory("nn.Conv2d", TINY, MEMORY[3:4])) == [MEMORY[3]]


def test_memory_figures_repeat_to_the_byte() -> None:
    # The saved-tensor-hook window must leave nothing behind that a later window counts (identity
    # hooks on a graph that saves its own output, the encoder's ReLU, would leak a cycle).
    encoder = replace(TINY, layers=2)
    net, inputs = impls.build_network(_row("NVIDIA multi_channel"), encoder, FAST), impls.make_inputs(encoder, FAST)
    mask = inputs.masks[MaskLayout.MULTI]
    first = measure_memory(net, inputs, mask, MEMORY, "cpu")
    assert measure_memory(net, inputs, mask, MEMORY, "cpu") == first
    assert measure_memory(net, inputs, mask, MEMORY[3:4], "cpu") == {MEMORY[3]: first[MEMORY[3]]}


# ----------------------------------------------------------------------------------------------
# Timing and ratios


def test_each_timed_call_sits_between_two_conv_calls() -> None:
    calls: list[str] = []
    steps = {name: {mode: (lambda n=name: calls.append(n)) for mode in ("f", "b")} for name in ("conv", "a", "b", "c")}
    found = time_interleaved(steps, dict.fromkeys(steps, "conv"), repeats=3, warmup=1, calls=2)
    rounds = [calls[i : i + 14] for i in range(0, len(calls), 14)]  # per mode: conv + 3 × (x, conv), 2 calls each
    assert len(rounds) == 4 * 2
    firsts = []
    for r in rounds:
        assert r[::2] == r[1::2]  # each sample is 2 calls in a row
        sequence = r[::2]
        assert sequence[0::2] == ["conv"] * 4 and sorted(sequence[1::2]) == ["a", "b", "c"]
        firsts.append(sequence[1])
    assert firsts == ["a", "a", "b", "b", "c", "c", "a", "a"]  # rotated each repeat, the same in each mode
    for name in steps:
        for mode in ("f", "b"):
            samples = found[name][mode]
            assert len(samples.seconds) == len(samples.conv) == 3  # the warm-up repeat is not kept


def test_each_call_sits_between_calls_of_its_own_conv() -> None:
    # The compiled config: eager rows next to eager nn.Conv2d, compiled ones next to compiled.
    calls: list[str] = []
    names = ("eager conv", "eager", "compiled conv", "compiled")
    steps = {name: {"f": (lambda n=name: calls.append(n))} for name in names}
    convs = {"eager conv": "eager conv", "eager": "eager conv", "compiled conv": "compiled conv"}
    found = time_interleaved(steps, {**convs, "compiled": "compiled conv"}, repeats=2, warmup=0)
    first = ["eager conv", "eager", "eager conv", "compiled conv", "compiled", "compiled conv"]
    assert calls == first + first[3:] + first[:3]
    assert all(len(found[name]["f"].seconds) == 2 for name in names)


def _samples(seconds: list[float], conv: list[float]) -> Samples:
    return Samples(seconds, conv)


def test_records_ratios_from_neighbouring_calls() -> None:
    config = replace(TINY, modes=("forward",), memory=("peak forward",))
    conv, ours, nvidia = _row("nn.Conv2d"), _row("PConv2d"), _row("NVIDIA single")
    rows = [
        Row(config, conv, {"forward": _samples([1.0, 2.0, 4.0], [1.0, 2.0, 4.0])}, {"peak forward": 100}, None),
        # Twice its neighbours in the first two repeats, three times in the last: the median is 2.
        Row(config, ours, {"forward": _samples([2.0, 4.0, 9.0], [1.0, 2.0, 3.0])}, {"peak forward": 150}, 1e-8),
        Row(config, nvidia, {"forward": _samples([4.0, 4.0, 4.0], [1.0, 1.0, 1.0])}, {"peak forward": 300}, 0.0),
    ]
    recs = records(Run([config], rows, [], FAST))
    get = {(r["implementation"], r["metric"]): r for r in recs}
    time = get[("PConv2d", "time forward")]
    assert time["ratio_to_conv"] == 2.0 and time["value"] == 4000.0  # ms
    assert time["ratio_to_nvidia"] == 0.5  # median of 2/4, 2/4, 3/4
    assert time["beyond_conv_us"] == 2e6  # median of 1, 2, 6 seconds
    assert time["samples_ms"] == [2000.0, 4000.0, 9000.0]
    # Each median with its quartiles: the first and the third of the three samples' midpoints.
    assert (time["value_q1"], time["value_q3"], time["min"], time["max"]) == (3000.0, 6500.0, 2000.0, 9000.0)
    assert (time["ratio_to_conv_q1"], time["ratio_to_conv_q3"]) == (2.0, 2.5)
    assert (time["ratio_to_nvidia_q1"], time["ratio_to_nvidia_q3"]) == (0.5, 0.625)
    assert (time["beyond_conv_us_q1"], time["beyond_conv_us_q3"]) == (1.5e6, 4e6)
    text = format_report(Run([config], rows, [], FAST), recs, environment(Run([config], rows, [], FAST)), [])
    line = next(line for line in text.splitlines() if line.startswith("PConv2d "))
    assert line.split() == ["PConv2d", "4000", "±1750", "2.00", "±0.25×", "0.50", "±0.06×"]
    assert get[("nn.Conv2d", "time forward")]["ratio_to_conv"] == 1.0
    memory = get[("PConv2d", "memory peak forward")]
    assert (memory["ratio_to_conv"], memory["ratio_to_nvidia"]) == (1.5, 0.5)
    assert get[("PConv2d", "relative error vs NVIDIA")]["value"] == 1e-8


# ----------------------------------------------------------------------------------------------
# Other builds


def _v011_wheel(tmp_path: Path) -> Path:
    """A stand-in for torch-pconv 0.1.1's wheel (a zip with torch_pconv/pconv.py): the loader's
    contract, without the real package."""
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


def test_load_v011_reads_pconv_from_a_wheel(tmp_path: Path) -> None:
    cls = impls.load_v011(_v011_wheel(tmp_path))
    assert cls.__name__ == "PConv2d" and cls.__module__ == "torch_pconv_v011"
    assert cls(1, 2).args == (1, 2)  # type: ignore[attr-defined]


def _assert_loaded_apart(cls: type[nn.Module], package: Path) -> None:
    """``cls`` and its package's modules come from ``package``, never from the installed torch_pconv."""
    assert cls.__module__ == "torch_pconv_baseline.pconv" and cls is not torch_pconv.PConv2d
    for name, module in sys.modules.items():
        if name.startswith("torch_pconv_baseline"):
            assert Path(module.__file__ or "").resolve().is_relative_to(package.resolve()), name
    # The torch_pconv under test (the source tree, or an installed wheel) is still itself.
    assert not Path(torch_pconv.pconv.__file__).resolve().is_relative_to(package.resolve())


def test_load_baseline_from_a_copy_of_this_checkout(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "torch_pconv", tmp_path / "torch_pconv", ignore=shutil.ignore_patterns("__pycache__"))
    cls = impls.load_baseline(tmp_path)
    _assert_loaded_apart(cls, tmp_path)
    # Its own masks module, not ours: the relative imports resolved within the copy.
    assert sys.modules["torch_pconv_baseline._masks"] is not torch_pconv._masks
    assert impls.load_baseline(tmp_path / "torch_pconv").__module__ == "torch_pconv_baseline.pconv"
    with pytest.raises(FileNotFoundError, match="no torch_pconv package"):
        impls.load_baseline(tmp_path / "nowhere")


OLD_COMMIT = "1c196f3"  # before the quirks module: pconv, masks and reference only


@pytest.fixture
def old_checkout(tmp_path: Path) -> Path:
    """torch_pconv at OLD_COMMIT, exported with git archive; skipped outside a git checkout."""
    target = tmp_path / "old"
    target.mkdir()
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", OLD_COMMIT, "torch_pconv"], check=True, capture_output=True
        )
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"no git history with {OLD_COMMIT} here")
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def test_bench_measures_an_old_build_side_by_side(
    old_checkout: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["bench", *_TINY_ARGS, "--repeats", "2", "--out", str(tmp_path / "out"), "--baseline", str(old_checkout)]
    assert main(args) == 0
    _assert_loaded_apart(sys.modules["torch_pconv_baseline"].PConv2d, old_checkout)
    assert not (old_checkout / "torch_pconv" / "quirks.py").exists()  # truly the older layout
    printed = capsys.readouterr().out
    assert f"torch_pconv (baseline): PConv2d of {old_checkout}" in printed
    data = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert data["environment"]["baseline"] == str(old_checkout)
    names = {r["implementation"] for r in data["results"]}
    assert {"nn.Conv2d", "PConv2d", "NVIDIA single"} <= names
    baseline = [r for r in data["results"] if r["implementation"] == "torch_pconv (baseline)"]
    if "torch_pconv (baseline) not measured on custom: it fails (AttributeError" in printed:
        # That build reads private autograd state unguarded, which torch 2.1 to 2.5 lack: a note.
        assert baseline == []
        return
    assert {r["metric"] for r in baseline} >= {f"time {m}" for m in MODES} | {f"memory {m}" for m in MEMORY}
    assert next(r["value"] for r in baseline if r["metric"] == "relative error vs NVIDIA") < 1e-5


def test_a_build_that_fails_on_this_torch_is_a_note(tmp_path: Path) -> None:
    package = tmp_path / "torch_pconv"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from torch import nn\n"
        "class PConv2d(nn.Conv2d):\n"
        "    def __init__(self, *args, multi_channel=False, **kwargs):\n"
        "        super().__init__(*args, **kwargs)\n"
        "    def forward(self, input, mask=None):\n"
        "        raise AttributeError(\"module 'torch' has no attribute 'gone'\\nmore\")\n"
    )
    settings = replace(FAST, baseline=impls.load_baseline(tmp_path), baseline_path=tmp_path)
    run = run_bench([replace(TINY, modes=MODES[:1], memory=MEMORY[:1])], settings)
    assert (
        "torch_pconv (baseline) not measured on tiny: it fails (AttributeError: module 'torch' has no attribute 'gone')"
        in run.notes
    )
    assert [row.impl.name for row in run.rows if row.impl.kind == "baseline"] == []
    assert "PConv2d" in [row.impl.name for row in run.rows]


# ----------------------------------------------------------------------------------------------
# torch.compile


def _compiled(config: Config = TINY) -> Config:
    return replace(config, name="compiled", modes=MODES[:1], memory=MEMORY[1:2], compiled=True)


def test_compiled_config_without_torch_compile_is_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(torch, "compile")
    run = run_bench([_compiled(), replace(TINY, modes=MODES[:1], memory=())], FAST)
    assert any(note.startswith("compiled not measured: this torch") for note in run.notes), run.notes
    assert {row.config.name for row in run.rows} == {"tiny"}  # the run went on


def test_compiled_config_whose_compile_fails_is_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(model: nn.Module, **kwargs: Any) -> Any:
        def call(*args: Any) -> Any:
            raise RuntimeError("Dynamo is not supported here\nmore detail")

        return call

    monkeypatch.setattr(torch, "compile", failing)
    run = run_bench([_compiled()], FAST)
    (note,) = run.notes
    failed = "torch.compile of nn.Conv2d (compiled) failed (RuntimeError: Dynamo is not supported here)"
    assert note == f"compiled not measured: {failed}"
    assert run.rows == []
    recs = records(run)
    env = environment(run)
    assert note in format_report(run, recs, env, run.notes)


def test_compiled_config_rows_with_a_stand_in_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    # The rows, their ratios and the summary line, without a compiler's minutes (the real one runs
    # in the slow test below): the stand-in returns the module itself.
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: model)
    run = run_bench([_compiled()], FAST)
    names = [row.impl.name for row in run.rows]
    assert names == ["nn.Conv2d", "PConv2d", "nn.Conv2d (compiled)", "PConv2d (compiled)"]
    recs = records(run)
    get = {(r["implementation"], r["metric"]): r for r in recs}
    assert get[("nn.Conv2d (compiled)", "time forward")]["ratio_to_conv"] == 1.0  # each row's own conv
    assert get[("nn.Conv2d", "time forward")]["ratio_to_conv"] == 1.0
    assert get[("PConv2d (compiled)", "memory held forward→backward")]["ratio_to_conv"] > 0
    text = format_report(run, recs, environment(run), run.notes)
    assert "forward, PConv2d ÷ nn.Conv2d: compiled" in text


@pytest.mark.slow
def test_compiled_config_with_torch_compile() -> None:
    run = run_bench([_compiled()], replace(FAST, repeats=1))
    if run.notes:  # a torch or platform whose compiler fails: reported, not raised
        assert run.notes[0].startswith("compiled not measured: torch.compile of")
        return
    errors = {row.impl.name: row.error for row in run.rows if row.error is not None}
    assert set(errors) == {"PConv2d", "PConv2d (compiled)"} and max(errors.values()) < 1e-5


# ----------------------------------------------------------------------------------------------
# The command


_TINY_ARGS = ["--in-channels", "3", "--out-channels", "4", "--kernel-size", "3", "--size", "12", "--batch", "2"]


def test_bench_command_writes_json_csv_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Two layers: the encoder path, with the mask carried from layer to layer.
    pytest.importorskip("matplotlib")
    args = ["bench", *_TINY_ARGS, "--layers", "2", "--repeats", "2", "--warmup", "0", "--out", str(tmp_path)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("[1/1] custom done in ")  # not a terminal: one plain line per config
    assert "×conv" in printed and "×NVIDIA" in printed and "memory: bytes of live tensors" in printed
    assert "median ± IQR/2 of 2 interleaved repeats" in printed and " ±" in printed
    assert "reference" not in printed.replace("torch_pconv.reference", "")

    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["environment"]["torch"] == torch.__version__ and data["environment"]["repeats"] == 2
    assert data["configs"][0]["layers"] == 2
    names = {r["implementation"] for r in data["results"]}
    assert names == {"nn.Conv2d", "PConv2d", "PConv2d multi_channel", "PConv2d (B,H,W) mask"} | {
        "PartialConv2d multi_channel",  # a chain: the drop-in's returned masks, counted channel by channel
        "NVIDIA multi_channel",
        "NVIDIA single",
    }
    times = [r for r in data["results"] if r["metric"].startswith("time ")]
    assert len(times) == len(names) * len(MODES)
    assert all(len(r["samples_ms"]) == 2 and r["min"] <= r["value_q1"] <= r["value"] <= r["value_q3"] for r in times)
    for name in ("ratio_to_conv", "ratio_to_nvidia", "beyond_conv_us"):
        assert all(r[f"{name}_q1"] <= r[name] <= r[f"{name}_q3"] for r in times)
    assert all(r["ratio_to_conv"] > 0 and r["ratio_to_nvidia"] > 0 for r in times)
    memory = [r for r in data["results"] if r["metric"].startswith("memory ")]
    assert len(memory) == len(names) * len(MEMORY) and all(r["value"] > 0 for r in memory)
    conv = [r for r in data["results"] if r["implementation"] == "nn.Conv2d" and "ratio_to_conv" in r]
    assert all(r["ratio_to_conv"] == 1.0 for r in conv)
    errors = [r["value"] for r in data["results"] if r["metric"] == "relative error vs NVIDIA"]
    assert len(errors) == len(names) - 1 and max(errors) < 1e-5  # every row computes the same output

    with (tmp_path / "bench.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(data["results"]) and list(rows[0]) == CSV_FIELDS
    assert {f"{name}_q3" for name in ("value", "ratio_to_conv", "ratio_to_nvidia", "beyond_conv_us")} <= set(times[0])
    assert {float(r["value"]) for r in rows} == {float(r["value"]) for r in data["results"]}

    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fixed_cost_and_bfloat16_configs(tmp_path: Path) -> None:
    # The small configs of the default run, at their own sizes; a custom bfloat16 one, smaller.
    threads = torch.get_num_threads()
    bf16 = replace(TINY, name="bf16", modes=MODES[:1], memory=(), dtype="bfloat16")
    fixed = replace(CONFIGS["fixed"], calls=2)
    run = run_bench([fixed, bf16], replace(FAST, full=True))  # full: whatever this CPU's bfloat16 speed
    assert torch.get_num_threads() == threads  # the fixed config's one thread is undone
    recs = records(run)
    get = {(r["config"], r["implementation"], r["metric"]): r for r in recs}
    fixed_metrics = {"time forward", "time forward+backward", "relative error vs NVIDIA"}
    assert {m for c, _, m in get if c == "fixed"} == fixed_metrics
    assert isinstance(get[("fixed", "PConv2d", "time forward")]["beyond_conv_us"], float)
    assert get[("bf16", "PConv2d", "relative error vs NVIDIA")]["value"] < 3e-2
    text = format_report(run, recs, environment(run), run.notes)
    assert "µs beyond" in text and "(bfloat16, cpu)" in text and "1 thread" in text


@pytest.mark.parametrize(("threshold", "measured"), [(0.0, False), (float("inf"), True)])
def test_a_half_precision_this_cpu_convolves_slowly_is_left_out_of_the_default_run(
    threshold: float, measured: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch_pconv.bench import run as run_module

    monkeypatch.setattr(run_module, "_SLOW_PRECISION", threshold)
    bf16 = replace(TINY, name="bf16", modes=MODES[:1], memory=(), dtype="bfloat16")
    run = run_bench([bf16], FAST)
    assert bool(run.rows) == measured
    left_out = [note for note in run.notes if "slower than float32" in note]
    if measured:
        assert left_out == []
    else:
        assert len(left_out) == 1 and "--full runs it" in left_out[0]
    assert run_bench([bf16], replace(FAST, full=True)).rows  # --full runs it anyway


def test_bench_without_matplotlib_skips_the_chart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    config = replace(TINY, holes=None, modes=MODES[:1], memory=MEMORY[:1])
    run = run_bench([config], replace(FAST, repeats=1))
    assert write_chart(tmp_path / "bench.png", run, records(run), environment(run)) == (
        "matplotlib is not installed (pip install 'torch_pconv[bench]'): no chart"
    )
    assert not (tmp_path / "bench.png").exists()
    # mask None: the (B, H, W)-mask row and torch-pconv 0.1.1 do not apply.
    assert [row.impl.name for row in run.rows] == [
        "nn.Conv2d",
        "PConv2d multi_channel",
        "PConv2d",
        "NVIDIA multi_channel",
        "NVIDIA single",
    ]


def test_progress_lines_off_a_terminal_and_a_bar_on_one() -> None:
    # The command off a terminal, in test_bench_command_writes_json_csv_png: a line per config.
    # Without a bar: lines from write and set_postfix, nothing from update.
    stream = io.StringIO()
    progress = Progress(5, unit="call", bar=False, stream=stream)
    progress.update()
    progress.write("[1/2] tiny done in 1.2 s")
    progress.update(2)
    progress.set_postfix({"loss": "0.5"})
    progress.close()
    assert stream.getvalue() == "[1/2] tiny done in 1.2 s\ncall 3: loss 0.5\n"
    quiet = io.StringIO()
    progress = Progress(5, quiet=True, stream=quiet)
    progress.update()
    progress.write("nothing")
    progress.set_postfix({"loss": "0.5"})
    assert quiet.getvalue() == "" and progress.bar is None

    pytest.importorskip("tqdm")
    terminal = io.StringIO()
    progress = Progress(5, unit="call", leave=False, stream=terminal)
    assert progress.bar is not None
    progress.update()
    progress.write("[1/1] tiny done in 1.0 s")
    progress.close()
    assert "[1/1] tiny done in 1.0 s" in terminal.getvalue() and "1/5" in terminal.getvalue()


# ----------------------------------------------------------------------------------------------
# The allocator


def test_allocator_keeps_freed_memory_by_default_and_not_with_the_flag(libc: FakeLibc, tmp_path: Path) -> None:
    tiny = [*_TINY_ARGS, "--holes", "0", "--repeats", "1", "--warmup", "0"]
    assert main(["bench", *tiny, "--out", str(tmp_path / "kept")]) == 0
    assert libc.calls == list(allocator.KEPT.values())
    kept = json.loads((tmp_path / "kept" / "bench.json").read_text())["environment"]["allocator"]
    assert "freed memory kept (mallopt M_MMAP_THRESHOLD 32 MiB, M_MMAP_MAX 0," in kept

    libc.calls.clear()
    assert main(["bench", *tiny, "--default-allocator", "--out", str(tmp_path / "default")]) == 0
    assert libc.calls == []
    default = json.loads((tmp_path / "default" / "bench.json").read_text())["environment"]["allocator"]
    assert default.endswith(": its defaults (--default-allocator)")


def test_allocator_says_what_glibc_refused(libc: FakeLibc, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(libc, "mallopt", lambda option, value: int(option != allocator.KEPT["M_TOP_PAD"][0]))
    assert allocator.configure().endswith("; refused: M_TOP_PAD")


def test_allocator_left_alone_outside_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real lookup, on a platform whose C library is not glibc (macOS, Windows, musl).
    monkeypatch.setattr(allocator, "_glibc", _real_glibc)
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("", ""))
    assert allocator._glibc() is None
    for keep in (True, False):
        assert allocator.configure(keep).endswith("C library: its own defaults (only glibc's is tuned)")
    assert allocator.setting() == allocator.configure()


def test_allocator_setting_in_a_process_of_its_own() -> None:
    # The real mallopt, applied where it changes nothing but a throwaway process.
    code = "from torch_pconv.bench import allocator; print(allocator.configure())"
    said = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    if _real_glibc() is None:
        assert "its own defaults" in said
    else:
        assert "freed memory kept" in said and "refused" not in said


def _parse(*args: str) -> Any:
    parser = __import__("argparse").ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(args))


def test_configs_from_options() -> None:
    default = cli.selected_configs(_parse())
    assert [c.name for c in default] == list(CONFIGS)
    assert all(c.quick is None for c in default)
    assert cli.repeats_of(_parse()) == 9 and cli.repeats_of(_parse("--full")) == 15  # unless --repeats says
    assert cli.repeats_of(_parse("--full", "--repeats", "3")) == 3
    by_name = {c.name: c for c in default}
    quick = CONFIGS["inpainting"].quick
    assert quick is not None and (by_name["inpainting"].batch, by_name["inpainting"].size) == (quick.batch, quick.size)
    assert by_name["encoder"].modes == () and by_name["encoder"].memory == MEMORY  # memory only by default
    assert by_name["small"] == CONFIGS["small"]  # small already: the same in both runs
    full = {c.name: c for c in cli.selected_configs(_parse("--full"))}
    assert (full["inpainting"].batch, full["inpainting"].size, full["inpainting"].kernel_size) == (4, 128, 7)
    assert (full["k3"].batch, full["k3"].in_channels, full["k3"].size, full["k3"].kernel_size) == (4, 64, 128, 3)
    assert (full["v011"].batch, full["v011"].kernel_size) == (16, 9)
    assert full["encoder"].modes == MODES and full["encoder"].layers == 4
    fixed = full["fixed"]
    assert (fixed.batch, fixed.in_channels, fixed.out_channels, fixed.size, fixed.threads) == (1, 8, 8, 16, 1)
    (custom,) = cli.selected_configs(_parse("--kernel-size", "5", "--holes", "0"))
    assert (custom.name, custom.kernel_size, custom.padding, custom.holes) == ("custom", 5, 2, None)
    assert {c.batch for c in cli.selected_configs(_parse("--batch", "3"))} == {3}
