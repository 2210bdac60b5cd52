"""The inpaint command line answers a user's mistake in one line, before it writes anything:
status 2 for a usage error, 1 for a file that cannot be read, 130 for Ctrl-C; a genuine bug
still shows its traceback. Run in-process (main(argv)), but for one subprocess."""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("PIL")
pytest.importorskip("pytorch_msssim")

from torch_pconv.inpainting import InpaintingLoss, TrainConfig, cli, write_image
from torch_pconv.inpainting.train import CHECKPOINT

train_module = importlib.import_module("torch_pconv.inpainting.train")

PROG = "python -m torch_pconv inpaint"
# A network of 2 layers (crops: multiples of 4), no VGG-16: a step takes milliseconds.
TINY = ["--size", "16", "--layers", "2", "--widths", "4", "8", "--no-vgg", "--no-progress", "--device", "cpu"]
TINY += ["--batch", "2", "--fine-tune-steps", "0", "--log-every", "1", "--grid-every", "1000"]


def run(argv: Sequence[str]) -> int:
    """The exit status of the command line, in-process (argparse's errors exit via SystemExit)."""
    try:
        return cli.main(list(argv))
    except SystemExit as exit_:
        return int(exit_.code or 0)
    except KeyboardInterrupt:  # not let through: it would stop pytest itself
        pytest.fail("KeyboardInterrupt escaped the command line")


def one_error_line(capsys: pytest.CaptureFixture[str], command: str) -> str:
    """stderr, checked to be one error line of ``command`` (and no traceback); returns it."""
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{PROG} {command}: "), err
    return lines[0]


def _pngs(folder: Path, count: int, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for i in range(count):
        write_image(folder / f"{i}.png", torch.rand(3, 32, 32, generator=g))
    return folder


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four 32x32 colour PNGs."""
    return _pngs(tmp_path_factory.mktemp("images"), 4)


@pytest.fixture(scope="module")
def trained(images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of 2 steps (checkpoint at each), to resume, evaluate and fill with. Tests that
    would change it copy it first."""
    out = tmp_path_factory.mktemp("run") / "run"
    argv = ["train", "--images", str(images), "--out", str(out), *TINY, "--steps", "2", "--checkpoint-every", "1"]
    assert run(argv) == 0
    return out


def _train(images: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--images", str(images), "--out", str(out), *TINY, "--steps", "2", *extra]


# train: the options and TrainConfig -------------------------------------------------------------

# The TrainConfig fields that no option of the same name sets: the loss weights (--valid, ...),
# resume and progress (--no-resume, --no-progress), and batch_norm (tests only).
NOT_OPTIONS = {"weights", "resume", "progress", "batch_norm"}


def _train_help(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines to the terminal's width


def test_train_defaults_are_train_configs(capsys):
    args = cli.build_parser().parse_args(["train", "--images", "x"])
    paper = TrainConfig(images="x")
    exposed = [field.name for field in dataclasses.fields(TrainConfig) if field.name in vars(args)]
    assert set(exposed) == {field.name for field in dataclasses.fields(TrainConfig)} - NOT_OPTIONS
    for name in exposed:
        assert getattr(args, name) == getattr(paper, name), name
    assert cli._train_config(args) == paper
    text = _train_help(capsys)
    for name, weight in InpaintingLoss().weights.items():  # left out: InpaintingLoss's own
        assert f"--{name} {name.upper()} {name} loss weight (default: {weight:g})" in text


def test_a_changed_train_config_default_shows_in_the_parser(monkeypatch, capsys):
    @dataclasses.dataclass
    class Changed(TrainConfig):
        size: int = 512
        lr: float = 1e-3
        vgg: str | None = None
        seed: int = 7
        amp: bool = True

    monkeypatch.setattr(cli, "TrainConfig", Changed)
    args = cli.build_parser().parse_args(["train", "--images", "x"])
    assert (args.size, args.lr, args.vgg, args.seed, args.amp) == (512, 1e-3, None, 7, True)
    assert cli._train_config(args) == Changed(images="x")
    assert "crop side (default: 512)" in _train_help(capsys)
    # eval's own defaults are not TrainConfig's
    assert cli.build_parser().parse_args(["eval", "--images", "x"]).seed == 0


# train: usage errors, found before --out is created ----------------------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--images", "MISSING"], "--images MISSING: no such folder"),
        (["--images", "EMPTY"], "no images"),
        (["--masks", "MISSING"], "--masks MISSING: no such folder"),
        (["--masks", "EMPTY"], "no mask images"),
        (["--batch", "5"], "--batch 5: more than an epoch's 4 samples"),
        (["--size", "18"], "--size 18: .* multiple of 4: try 16 or 20"),
        (["--widths", "4", "8", "16"], "--widths 4 8 16: 3 values for --layers 2"),
        (["--kernels", "3", "4"], "--kernels 3 4: must be odd"),
        (["--log-every", "0"], "--log-every 0: must be at least 1"),
        (["--mask-pool", "3", "--masks", "IMAGES"], "mask_pool pools generated masks"),
        (["--device", "cuda"], "--device cuda: .* sees no CUDA device"),
        (["--device", "nonsense"], "--device nonsense: not a torch device"),
        (["--out", "FILE"], "a file, not a folder"),
    ],
    ids=lambda value: "-".join(value).strip("-") if isinstance(value, list) else "",
)
def test_train_usage_errors_say_one_line_and_write_nothing(images, tmp_path, monkeypatch, capsys, extra, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a CUDA machine
    (tmp_path / "EMPTY").mkdir()
    (tmp_path / "FILE").write_text("not a folder")
    places = {"MISSING": str(tmp_path / "missing"), "EMPTY": str(tmp_path / "EMPTY")}
    places |= {"IMAGES": str(images), "FILE": str(tmp_path / "FILE")}
    extra = [places.get(value, value) for value in extra]
    out = tmp_path / "run"
    assert run(_train(images, out, *extra)) == 2
    line = one_error_line(capsys, "train")
    expected = expected.replace("MISSING", str(tmp_path / "missing"))
    assert re.search(expected, line), line
    assert not out.exists()  # validated before anything was created


def test_train_corrupt_image_is_found_before_the_first_step(tmp_path, monkeypatch, capsys):
    folder = _pngs(tmp_path / "images", 6)
    _truncate(folder / "5.png")  # the last: a run would meet it only at a later batch
    steps = []
    monkeypatch.setattr(train_module, "_step", lambda *args: steps.append(1))
    out = tmp_path / "run"
    assert run(_train(folder, out)) == 1
    assert f"{folder / '5.png'}: not a readable image" in one_error_line(capsys, "train")
    assert not steps and not out.exists()


def test_train_damaged_checkpoint_to_resume(images, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / CHECKPOINT).write_text("not a checkpoint")
    assert run(_train(images, out)) == 1
    assert "is not a checkpoint of `inpaint train`" in one_error_line(capsys, "train")
    assert [p.name for p in out.iterdir()] == [CHECKPOINT]


def test_a_bug_still_shows_its_traceback(images, tmp_path, monkeypatch):
    def bug(*args: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(train_module, "_step", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        run(_train(images, tmp_path / "run"))


# train: resuming ----------------------------------------------------------------------------------


def test_resume_with_other_settings_is_refused(images, trained, capsys):
    before = (trained / CHECKPOINT).read_bytes()
    argv = _train(images, trained, "--batch", "1", "--lr", "0.001", "--seed", "3", "--size", "32")
    assert run(argv) == 2
    line = one_error_line(capsys, "train")
    for difference in ("--size: 16 stored, 32 given", "--batch: 2 stored, 1 given", "--lr: 0.0002 stored, 0.001 given"):
        assert difference in line
    assert "--seed: 0 stored, 3 given" in line
    assert "another --out" in line and "--no-resume" in line
    assert run(_train(images, trained, "--steps", "1")) == 2  # shorter
    assert "--steps: 2 stored, 1 given (a resume may lengthen a run, not shorten it)" in one_error_line(capsys, "train")
    assert (trained / CHECKPOINT).read_bytes() == before


def test_resume_may_change_how_a_run_is_observed_and_lengthen_it(images, trained, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    observed = ["--log-every", "2", "--grid-every", "3", "--checkpoint-every", "5", "--device", "cpu"]
    argv = [*_train(images, out, *observed, "--cache-images"), "--steps", "3"]
    argv.remove("--no-progress")
    assert run(argv) == 0
    assert torch.load(out / CHECKPOINT, weights_only=True)["step"] == 3
    # And fine-tuning may follow the first phase, but the first phase cannot grow once it began.
    assert run([*_train(images, out), "--steps", "3", "--fine-tune-steps", "1"]) == 0
    capsys.readouterr()
    assert run([*_train(images, out), "--steps", "4", "--fine-tune-steps", "1"]) == 2
    assert "past the first phase" in one_error_line(capsys, "train")


def test_interrupted_training_says_where_the_last_checkpoint_is(images, tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    step = train_module._step

    def interrupted_at_the_third(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return step(*args)

    monkeypatch.setattr(train_module, "_step", interrupted_at_the_third)
    out = tmp_path / "run"
    assert run([*_train(images, out, "--checkpoint-every", "2"), "--steps", "4"]) == 130
    line = one_error_line(capsys, "train")
    assert line.endswith(
        f"interrupted; the last checkpoint (of step 2) is {out / CHECKPOINT}: the same command resumes from it"
    )
    # Before any checkpoint of this run (--no-resume: the one in the folder is another run's).
    calls["n"] = 0
    assert run([*_train(images, out, "--checkpoint-every", "5", "--no-resume"), "--steps", "4"]) == 130
    assert "interrupted before this run wrote a checkpoint: nothing to resume from" in one_error_line(capsys, "train")


# eval and fill ------------------------------------------------------------------------------------


def test_eval_without_checkpoint_or_baselines_is_a_usage_error(images, tmp_path, capsys):
    out = tmp_path / "eval"
    assert run(["eval", "--images", str(images), "--size", "16", "--out", str(out)]) == 2
    assert "nothing to evaluate: give --checkpoint, --baselines, or both" in one_error_line(capsys, "eval")
    assert not out.exists()


@pytest.mark.parametrize(
    ("kind", "status", "expected"),
    [
        ("missing", 2, "--checkpoint {path}: no such file"),
        ("text", 1, "{path} is not a checkpoint of `inpaint train`: not a file written by torch.save"),
        ("state_dict", 1, "{path} is not a checkpoint of `inpaint train`: it lacks model_args, fine_tune, step"),
    ],
    ids=["missing", "text", "state_dict"],
)
def test_eval_and_fill_name_a_checkpoint_that_is_not_one(images, tmp_path, capsys, kind, status, expected):
    path = tmp_path / "checkpoint.pt"
    if kind == "text":
        path.write_text("hello")
    elif kind == "state_dict":
        torch.save({"model": {"weight": torch.zeros(2)}}, path)
    out = tmp_path / "eval"
    argv = ["eval", "--checkpoint", str(path), "--images", str(images), "--size", "16", "--out", str(out)]
    assert run(argv) == status
    assert expected.format(path=path) in one_error_line(capsys, "eval")
    assert not out.exists()
    png = str(images / "0.png")
    argv = ["fill", "--checkpoint", str(path), "--image", png, "--mask", png, "--out", str(tmp_path / "o.png")]
    assert run(argv) == status
    assert expected.format(path=path) in one_error_line(capsys, "fill")


def test_eval_missing_images_folder(tmp_path, capsys):
    assert run(["eval", "--baselines", "--images", str(tmp_path / "missing"), "--out", str(tmp_path / "e")]) == 2
    assert f"--images {tmp_path / 'missing'}: no such folder" in one_error_line(capsys, "eval")


def test_fill_errors(images, trained, tmp_path, capsys):
    png, out = str(images / "0.png"), str(tmp_path / "filled.png")
    fill = ["fill", "--checkpoint", str(trained / CHECKPOINT)]
    assert run([*fill, "--image", str(tmp_path / "no.png"), "--mask", png, "--out", out]) == 2
    assert f"--image {tmp_path / 'no.png'}: no such file" in one_error_line(capsys, "fill")
    corrupt = tmp_path / "corrupt.png"
    shutil.copy(png, corrupt)
    _truncate(corrupt)
    assert run([*fill, "--image", str(corrupt), "--mask", png, "--out", out]) == 1
    assert f"{corrupt}: not a readable image" in one_error_line(capsys, "fill")
    (tmp_path / "garbage.png").write_text("garbage")
    assert run([*fill, "--image", png, "--mask", str(tmp_path / "garbage.png"), "--out", out]) == 1
    assert f"{tmp_path / 'garbage.png'}: not a readable mask image" in one_error_line(capsys, "fill")
    write_image(tmp_path / "small.png", torch.ones(1, 16, 24))
    assert run([*fill, "--image", png, "--mask", str(tmp_path / "small.png"), "--out", out]) == 2
    assert "is 24x16 pixels, --image" in one_error_line(capsys, "fill")
    assert run([*fill, "--image", png, "--mask", png, "--out", str(tmp_path / "filled")]) == 2
    assert "Pillow writes no image format of suffix ''" in one_error_line(capsys, "fill")
    assert not Path(out).exists()


@pytest.mark.parametrize("command", ["eval", "fill"])
def test_eval_and_fill_take_cuda_when_available(images, trained, tmp_path, monkeypatch, command):
    """As their --device help says (and as train does)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    devices = []

    class Stop(Exception):
        pass

    def load(path: str, device: torch.device) -> Any:
        devices.append(device)
        raise Stop

    monkeypatch.setattr(cli, "_load_model", load)
    checkpoint, png = str(trained / CHECKPOINT), str(images / "0.png")
    if command == "eval":
        argv = ["eval", "--checkpoint", checkpoint, "--images", str(images), "--out", str(tmp_path / "e")]
    else:
        argv = ["fill", "--checkpoint", checkpoint, "--image", png, "--mask", png, "--out", str(tmp_path / "o.png")]
    with pytest.raises(Stop):
        cli.main(argv)
    assert devices == [torch.device("cuda", 0)]


# End to end, in a process of its own: no traceback ----------------------------------------------


def test_no_traceback_end_to_end(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    argv = [sys.executable, "-m", "torch_pconv", "inpaint", "train", "--images", str(tmp_path / "missing")]
    argv += ["--out", str(tmp_path / "run")]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, env=env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"{PROG} train: error: --images {tmp_path / 'missing'}: no such folder"]
    assert not (tmp_path / "run").exists()
