"""`python -m torch_pconv bench` and `check` answer a mistake in their options with argparse's usage
line, one line naming it and exit status 2 (1 for a file that cannot be loaded), never a traceback,
and before anything runs or is written. In-process (main(argv)); nothing here measures anything:
the run functions are replaced by ones that fail the test."""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from torch_pconv import check
from torch_pconv.__main__ import main
from torch_pconv.bench import cli
from torch_pconv.bench.run import Run

ABSENT_CUDA = f"cuda:{torch.cuda.device_count()}"  # one past the last, on any machine


@pytest.fixture(autouse=True)
def nothing_runs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Neither the benchmark nor the check runs; the default --out (bench-out) is under tmp_path."""

    def fail(*args: Any, **kwargs: Any) -> Any:
        pytest.fail("ran, where the options should have been refused first")

    monkeypatch.setattr(cli, "run_bench", fail)
    monkeypatch.setattr(check, "run_check", fail)
    monkeypatch.chdir(tmp_path)


def refused(argv: Sequence[str], capsys: pytest.CaptureFixture[str], status: int = 2) -> str:
    """Run the command line; check its exit status, that it printed nothing on stdout and, on
    stderr, argparse's usage (for status 2) and one line of error, no traceback. Returns that line."""
    with pytest.raises(SystemExit) as exit_:
        raise SystemExit(main(list(argv)))  # argparse's errors exit from within main
    assert exit_.value.code == status
    out, err = capsys.readouterr()
    assert out == ""
    assert "Traceback" not in err
    if status == 2:
        assert err.startswith("usage: python -m torch_pconv " + argv[0]), err
    # argparse's usage is "usage: ..." and its indented continuation lines.
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("usage:", " "))]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"python -m torch_pconv {argv[0]}: error: "), err
    return lines[0]


# ----------------------------------------------------------------------------------------------
# --device and --seed, of both commands


@pytest.mark.parametrize("command", ["check", "bench"])
@pytest.mark.parametrize(
    ("device", "says"),
    [
        ("foo", "not a torch device"),
        ("cuda:-1", "not a torch device"),
        ("meta", "meta tensors hold no data"),
        (ABSENT_CUDA, "CUDA device"),
    ],
)
def test_a_device_to_refuse_is_one_line(command: str, device: str, says: str, capsys: Any) -> None:
    line = refused([command, "--device", device], capsys)
    assert f"--device {device}: " in line and says in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", ["check", "bench"])
def test_cuda_on_a_machine_without_it_is_one_line(command: str, capsys: Any) -> None:
    assert "sees no CUDA device" in refused([command, "--device", "cuda"], capsys)


def test_a_device_type_this_build_cannot_use_is_one_line(capsys: Any) -> None:
    # A device type torch knows, but cannot make a tensor on here (and warns of, as deprecated).
    line = refused(["check", "--device", "mkldnn"], capsys)
    assert "--device mkldnn: this machine or torch build cannot hold tensors there" in line


@pytest.mark.parametrize("command", ["check", "bench"])
@pytest.mark.parametrize("seed", [str(2**64), str(-(2**63) - 1)])
def test_a_seed_torch_cannot_take_is_one_line(command: str, seed: str, capsys: Any) -> None:
    assert f"--seed {seed}: must lie between" in refused([command, "--seed", seed], capsys)


# ----------------------------------------------------------------------------------------------
# bench: the numbers


@pytest.mark.parametrize(
    ("option", "value", "low"),
    [
        ("--repeats", "0", 1),
        ("--repeats", "-1", 1),
        ("--warmup", "-1", 0),  # was a StatisticsError after the whole run
        ("--size", "0", 1),
        ("--kernel-size", "0", 1),
        ("--batch", "0", 1),
        ("--padding", "-1", 0),
        ("--threads", "0", 1),
        ("--in-channels", "0", 1),
        ("--out-channels", "0", 1),
        ("--layers", "0", 1),
    ],
)
def test_bench_numbers_out_of_range_are_one_line(option: str, value: str, low: int, capsys: Any) -> None:
    assert f"argument {option}: {value}: must be at least {low}" in refused(["bench", option, value], capsys)


def test_bench_number_that_is_no_number_is_one_line(capsys: Any) -> None:
    assert "argument --repeats: 'many' is not a whole number" in refused(["bench", "--repeats", "many"], capsys)


@pytest.mark.parametrize("holes", ["1.5", "-1", "nan", "inf", "half"])
def test_bench_holes_outside_0_to_1_are_one_line(holes: str, capsys: Any) -> None:
    assert "argument --holes: " in refused(["bench", "--holes", holes], capsys)


def test_bench_holes_from_0_to_1() -> None:
    parse = _parser().parse_args
    (none,) = cli.selected_configs(parse(["--holes", "0"]))
    (full,) = cli.selected_configs(parse(["--holes", "1"]))  # every pixel a hole: it runs, all outputs 0
    assert none.holes is None and full.holes == 1.0 and "mask with 100% holes" in full.describe()


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--size", "4", "--padding", "0"], "--kernel-size 7 with --padding 0 needs a --size of at least 7, not 4"),
        (["--kernel-size", "5", "--padding", "0", "--size", "8", "--layers", "2"], "at least 9, not 8"),
    ],
)
def test_bench_kernel_that_does_not_fit_the_size_is_one_line(argv: list[str], says: str, capsys: Any) -> None:
    assert says in refused(["bench", *argv], capsys)


def test_bench_kernel_that_just_fits() -> None:
    args = _parser().parse_args(["--kernel-size", "5", "--padding", "0", "--size", "9", "--layers", "2"])
    assert cli.problem(args) is None  # a 1×1 output


# ----------------------------------------------------------------------------------------------
# bench: the paths, checked before the run


def test_bench_out_that_is_a_file_is_one_line(tmp_path: Path, capsys: Any) -> None:
    file = tmp_path / "report"
    file.write_text("mine\n")
    line = refused(["bench", "--out", str(file)], capsys)
    assert f"--out {file}: a file, not a folder" in line
    assert file.read_text() == "mine\n"
    line = refused(["bench", "--out", str(file / "sub")], capsys)
    assert f"--out {file / 'sub'}: cannot be made: {file} is a file" in line


def test_bench_out_whose_report_file_is_a_folder_is_one_line(tmp_path: Path, capsys: Any) -> None:
    (tmp_path / "out" / "bench.json").mkdir(parents=True)
    assert "bench.json is a folder" in refused(["bench", "--out", str(tmp_path / "out")], capsys)


@pytest.mark.parametrize(
    ("option", "path", "says"),
    [
        ("--v011", "nowhere", "no such file or folder"),
        ("--baseline", "nowhere", "no such folder"),
        ("--baseline", "file.txt", "a file, not a folder"),
        ("--baseline", ".", "no torch_pconv package there"),
    ],
)
def test_bench_other_build_not_there_is_one_line(
    option: str, path: str, says: str, tmp_path: Path, capsys: Any
) -> None:
    (tmp_path / "file.txt").write_text("")
    target = tmp_path / path
    assert f"{option} {target}: {says}" in refused(["bench", option, str(target)], capsys)


def test_bench_v011_that_cannot_be_loaded_is_one_line_status_1(tmp_path: Path, capsys: Any) -> None:
    not_a_wheel = tmp_path / "torch_pconv-0.1.1.whl"
    not_a_wheel.write_text("not a zip archive\n")
    line = refused(["bench", "--v011", str(not_a_wheel)], capsys, status=1)
    assert f"--v011 {not_a_wheel}: cannot load its PConv2d (BadZipFile: " in line
    with zipfile.ZipFile(not_a_wheel, "w") as wheel:  # a wheel of something else
        wheel.writestr("other/module.py", "")
    assert "(KeyError: " in refused(["bench", "--v011", str(not_a_wheel)], capsys, status=1)


def test_bench_baseline_that_cannot_be_imported_is_one_line_status_1(tmp_path: Path, capsys: Any) -> None:
    package = tmp_path / "torch_pconv"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('needs torch 9\\non this line')\n")
    line = refused(["bench", "--baseline", str(tmp_path)], capsys, status=1)
    assert line.endswith(f"--baseline {tmp_path}: cannot load its PConv2d (ImportError: on this line)")


def test_bench_out_that_fails_after_the_run_prints_the_report_and_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    # A folder the checks pass but mkdir fails on (such as one under /proc): the report still prints.
    monkeypatch.setattr(cli, "_out_problem", lambda out: None)
    monkeypatch.setattr(cli, "run_bench", lambda configs, settings, **kw: Run(configs, [], [], settings))
    (tmp_path / "file").write_text("")
    assert main(["bench", "--configs", "small", "--out", str(tmp_path / "file" / "out")]) == 1
    out, err = capsys.readouterr()
    assert "torch_pconv" in out and "bench:" in out and "wrote" not in out
    assert err.splitlines() == [
        f"python -m torch_pconv bench: error: --out {tmp_path / 'file' / 'out'}: cannot write the report's files "
        "(Not a directory)"
    ]


def _parser() -> Any:
    import argparse

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser
