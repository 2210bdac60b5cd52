"""Training: the command line (train, eval, fill), exact resume, the two phases, AMP, and
DistributedDataParallel on two CPU processes (gloo)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import socket
import struct
import sys
import zlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytest.importorskip("PIL")
pytest.importorskip("pytorch_msssim")

from torch_pconv.__main__ import main as torch_pconv_main
from torch_pconv.inpainting import (
    PConvUNet,
    TrainConfig,
    learning_rate,
    load_checkpoint,
    load_model,
    read_image,
    read_mask,
    save_grid,
    train,
    write_image,
)
from torch_pconv.inpainting.data import verify_images
from torch_pconv.inpainting.train import CHECKPOINT, UsageError

# The module, not the function of the same name that the package exports.
train_module = importlib.import_module("torch_pconv.inpainting.train")

TERMS = {"valid", "hole", "perceptual", "style_out", "style_comp", "tv", "total"}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four smooth 24x24 colour images (bilinear upsampling of random 3x3 ones) as PNGs."""
    folder = tmp_path_factory.mktemp("images")
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(4, 3, 3, 3, generator=g)
    for i, image in enumerate(torch.nn.functional.interpolate(coarse, size=(24, 24), mode="bilinear")):
        write_image(folder / f"{i}.png", image)
    return folder


def _config(images: Path, out: Path, **kwargs: object) -> TrainConfig:
    settings: dict[str, object] = {
        "images": str(images),
        "out": str(out),
        "size": 16,
        "batch": 2,
        "steps": 3,
        "fine_tune_steps": 0,
        "layers": 2,
        "widths": (4, 8),
        "vgg": None,
        "samples_per_epoch": 6,
        "log_every": 1,
        "grid_every": 1000,
        "checkpoint_every": 1000,
        "progress": False,
        "device": "cpu",
        **kwargs,
    }
    return TrainConfig(**settings)  # type: ignore[arg-type]


def _state(path: Path) -> dict[str, object]:
    return torch.load(path / CHECKPOINT, weights_only=False)


def test_cli_train_eval_fill(images, tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--size", "16", "--layers", "2", "--widths", "4", "8", "--no-progress"]
    argv = ["inpaint", "train", "--images", str(images), "--out", str(run), "--batch", "2", "--steps", "2"]
    argv += ["--fine-tune-steps", "1", "--no-vgg", "--samples-per-epoch", "4", "--log-every", "1", "--grid-every", "2"]
    argv += ["--schedule", "cosine", "--warmup-steps", "1", "--mask-pool", "3"]
    assert torch_pconv_main(argv + common) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3]
    assert [entry["phase"] for entry in log] == ["train", "train", "fine_tune"]
    assert all(TERMS <= set(entry) for entry in log)
    assert sorted(p.name for p in run.glob("grid_*.png")) == ["grid_0000002.png", "grid_0000003.png"]
    grid = read_image(run / "grid_0000002.png")
    assert grid.shape[-2] == 4 * 16 + 3 * 2  # masked input, output, composite, ground truth
    state = _state(run)
    assert state["step"] == 3 and state["fine_tune"]
    assert {k: state["config"][k] for k in ("schedule", "warmup_steps", "mask_pool")} == {
        "schedule": "cosine",
        "warmup_steps": 1,
        "mask_pool": 3,
    }

    out = tmp_path / "eval"
    argv = ["inpaint", "eval", "--checkpoint", str(run / CHECKPOINT), "--images", str(images), "--size", "16"]
    assert torch_pconv_main([*argv, "--crops", "1", "--baselines", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "PConvUNet" in printed and "diffusion" in printed and "mean colour" in printed
    results = json.loads((out / "metrics.json").read_text())
    assert set(results) == {"PConvUNet", "mean colour", "diffusion"}
    assert results["PConvUNet"][-1] == {**results["PConvUNet"][-1], "bucket": "all", "images": 4 * 6}
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert header == "method,bucket,images,l1,hole_l1,psnr,ssim"

    # Fill an image whose sides are not multiples of 4, with a mask PNG whose white pixels are holes.
    image = torch.rand(3, 21, 27, generator=torch.Generator().manual_seed(1))
    write_image(tmp_path / "image.png", image)
    holes = torch.zeros(1, 21, 27)
    holes[:, 5:12, 8:20] = 1
    write_image(tmp_path / "mask.png", holes)
    argv = ["inpaint", "fill", "--checkpoint", str(run / CHECKPOINT), "--image", str(tmp_path / "image.png")]
    argv += ["--mask", str(tmp_path / "mask.png"), "--hole-value", "255", "--out", str(tmp_path / "filled.png")]
    assert torch_pconv_main(argv) == 0
    filled, original = read_image(tmp_path / "filled.png"), read_image(tmp_path / "image.png")
    valid = holes.expand(3, -1, -1) == 0
    assert filled.shape == original.shape
    assert torch.equal(filled[valid], original[valid])
    assert not torch.equal(filled, original)


@pytest.mark.parametrize(
    "settings",
    [{}, {"schedule": "cosine", "warmup_steps": 2, "mask_pool": 4}],
    ids=["paper", "cosine-pool"],
)
def test_resume_is_exact(images, tmp_path, monkeypatch, settings):
    # Straight through: 4 steps, then 2 of fine-tuning (3 steps an epoch: resumes fall mid-epoch).
    settings = {"steps": 4, "fine_tune_steps": 2, "checkpoint_every": 2, **settings}
    straight = train(_config(images, tmp_path / "straight", **settings))
    # Killed during step 4 (after step 3 was logged, but with the checkpoint of step 2), then
    # during step 5 (after the first phase's checkpoint), and resumed each time.
    calls = {"n": 0}
    step = train_module._step

    def killed_at(stops: set[int]) -> Any:
        def wrapped(*args: Any) -> Any:
            calls["n"] += 1
            if calls["n"] in stops:
                raise KeyboardInterrupt
            return step(*args)

        return wrapped

    monkeypatch.setattr(train_module, "_step", killed_at({4, 7}))
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            train(_config(images, tmp_path / "resumed", **settings))
    assert _state(tmp_path / "resumed")["step"] == 4
    resumed = train(_config(images, tmp_path / "resumed", **settings))
    assert straight["step"] == resumed["step"] == 6
    a, b = _state(tmp_path / "straight"), _state(tmp_path / "resumed")
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    for key, value in a["optimizer"]["state"].items():
        for field, tensor in value.items():
            assert torch.equal(tensor, b["optimizer"]["state"][key][field]), (key, field)
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"] == 5e-5
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    straight_log = (tmp_path / "straight" / "log.jsonl").read_text().splitlines()
    resumed_log = (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()
    assert straight_log == resumed_log  # the same losses, step for step, step 3 logged once
    # --no-resume starts afresh, and so does its log.
    again = train(_config(images, tmp_path / "resumed", steps=1, resume=False))
    assert again["step"] == 1
    assert [json.loads(line)["step"] for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()] == [1]


def test_resuming_another_network_says_so(images, tmp_path):
    train(_config(images, tmp_path, steps=1))
    with pytest.raises(UsageError, match=r"--widths: \(4, 8\) stored, \(4, 6\) given\..*--no-resume"):
        train(_config(images, tmp_path, steps=2, widths=(4, 6)))
    # The checkpoint itself names its network when asked to load into another.
    with pytest.raises(ValueError, match=r"holds a network built with .*'widths': \(4, 8\).*--no-resume"):
        load_checkpoint(tmp_path / CHECKPOINT, PConvUNet(layers=2, widths=(4, 6)))
    assert train(_config(images, tmp_path, steps=1, widths=(4, 6), resume=False))["step"] == 1


def test_torn_log_line_is_dropped_on_resume(images, tmp_path):
    train(_config(images, tmp_path, steps=2, checkpoint_every=2))
    with (tmp_path / "log.jsonl").open("a") as log:
        log.write('{"step": 3, "phase": "tr')  # killed mid-write, after the checkpoint of step 2
    train(_config(images, tmp_path, steps=3))
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]


def _png16(path: Path, kind: int, samples: list[int], width: int) -> None:
    """A 16-bit PNG of colour type ``kind`` (0 grey, 2 RGB, 4 grey and alpha), one row."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, 1, 16, kind, 0, 0, 0)
    row = b"\x00" + struct.pack(f">{len(samples)}H", *samples)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row)) + chunk(b"IEND", b"")
    path.write_bytes(png)


def test_read_image_16_bit_and_other_modes(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    _png16(tmp_path / "grey16.png", 0, [0, 32768, 65535], 3)
    expected = torch.tensor([0, 32768, 65535]) / 65535
    with pil.open(tmp_path / "grey16.png") as file:
        assert file.mode in ("I;16", "I")  # I: Pillow before 10.4
    assert torch.equal(read_image(tmp_path / "grey16.png"), expected.view(1, 1, 3).expand(3, 1, 3))
    # Big-endian 16-bit (TIFF), 32-bit integers as 16-bit data, floats in [0, 1]: each clipped.
    pil.frombytes("I;16B", (3, 1), struct.pack(">3H", 0, 32768, 65535)).save(tmp_path / "grey16b.tif")
    assert torch.equal(read_image(tmp_path / "grey16b.tif")[0, 0], expected)
    pil.frombytes("I", (3, 1), struct.pack("=3i", -5, 32768, 70000)).save(tmp_path / "int32.tif")
    assert torch.equal(read_image(tmp_path / "int32.tif")[0, 0], torch.tensor([0, 32768 / 65535, 1]))
    pil.frombytes("F", (3, 1), struct.pack("=3f", -1, 0.25, 2)).save(tmp_path / "float.tif")
    assert torch.equal(read_image(tmp_path / "float.tif")[0, 0], torch.tensor([0, 0.25, 1]))
    # Alpha is dropped: the colours as stored, whatever their opacity (16-bit grey and alpha too).
    _png16(tmp_path / "la16.png", 4, [65535, 0, 257, 65535], 2)
    assert torch.equal(read_image(tmp_path / "la16.png")[:, 0], torch.tensor([[1.0, 1 / 255]] * 3))
    pil.frombytes("RGBA", (1, 1), bytes([10, 20, 30, 0])).save(tmp_path / "rgba.png")
    assert torch.equal(read_image(tmp_path / "rgba.png").flatten(), torch.tensor([10, 20, 30]) / 255)
    palette = pil.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255])
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "palette.png", transparency=0)
    assert torch.equal(read_image(tmp_path / "palette.png")[:, 0].T, torch.tensor([[1.0, 0, 0], [0, 0, 1]]))
    pil.frombytes("CMYK", (1, 1), bytes([0, 255, 255, 0])).save(tmp_path / "cmyk.tif")
    assert torch.equal(read_image(tmp_path / "cmyk.tif").flatten(), torch.tensor([1.0, 0, 0]))
    pil.frombytes("L", (2, 1), bytes([0, 128])).save(tmp_path / "grey8.png")  # 8 bits: as before
    assert torch.equal(read_image(tmp_path / "grey8.png")[:, 0, 1], torch.full((3,), 128 / 255))


def test_read_mask_16_bit(tmp_path):
    _png16(tmp_path / "mask16.png", 0, [0, 30000, 40000, 65535], 4)  # dark grey is nearer black
    assert read_mask(tmp_path / "mask16.png").flatten().tolist() == [0, 0, 1, 1]
    assert read_mask(tmp_path / "mask16.png", hole_value=255).flatten().tolist() == [1, 1, 0, 0]


def test_unreadable_images_are_named(tmp_path):
    (tmp_path / "garbage.png").write_text("garbage")
    with pytest.raises(OSError, match=r"garbage\.png: not a readable image"):
        read_image(tmp_path / "garbage.png")
    with pytest.raises(OSError, match=r"garbage\.png: not a readable image"):
        verify_images([tmp_path / "garbage.png"])


def test_learning_rate_schedules():
    paper = TrainConfig(images="x", steps=100, fine_tune_steps=10, lr=2e-4, fine_tune_lr=5e-5)
    assert [learning_rate(paper, s) for s in (0, 50, 99, 100, 109)] == [2e-4] * 3 + [5e-5] * 2
    cosine = dataclasses.replace(paper, schedule="cosine", warmup_steps=10)
    assert learning_rate(cosine, 0) == pytest.approx(2e-4 * 0.1 * 0.5 * (1 + math.cos(0.0)))
    assert learning_rate(cosine, 9) == pytest.approx(2e-4 * 0.5 * (1 + math.cos(math.pi * 9 / 100)))
    assert learning_rate(cosine, 50) == pytest.approx(1e-4)  # half way down
    assert 0 < learning_rate(cosine, 99) < 1e-7
    assert learning_rate(cosine, 100) == 5e-5  # fine-tuning keeps its own rate
    rates = [learning_rate(cosine, s) for s in range(10, 100)]
    assert rates == sorted(rates, reverse=True)
    with pytest.raises(ValueError, match="schedule must be one of constant, cosine"):
        TrainConfig(images="x", schedule="linear")
    with pytest.raises(ValueError, match="mask_pool pools generated masks"):
        TrainConfig(images="x", masks="folder", mask_pool=100)


def test_fine_tuning_freezes_encoder_batch_norm(images, tmp_path):
    train(_config(images, tmp_path, steps=2, widths=(4, 8), layers=2))
    first = _state(tmp_path)["model"]
    train(_config(images, tmp_path, steps=2, fine_tune_steps=2))
    second = _state(tmp_path)
    assert second["fine_tune"]
    encoder_bn = [k for k in first if k.startswith("encoder.1.norm.")]
    assert encoder_bn
    for name in encoder_bn:  # weight, bias, running statistics: untouched
        if not name.endswith("num_batches_tracked"):
            assert torch.equal(first[name], second["model"][name]), name
    assert not torch.equal(first["decoder.0.norm.weight"], second["model"]["decoder.0.norm.weight"])
    assert not torch.equal(first["encoder.0.conv.weight"], second["model"]["encoder.0.conv.weight"])
    model = load_model(tmp_path / CHECKPOINT)
    assert model.fine_tune and not model.training


def test_amp_on_cpu(images, tmp_path):
    result = train(_config(images, tmp_path, steps=2, amp=True))
    assert all(torch.isfinite(torch.tensor(result[name])) for name in TERMS)


def test_progress_without_tqdm(images, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    train(_config(images, tmp_path, steps=2, progress=True))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["step 1", "step 2"]
    assert all("hole" in line and "total" in line for line in lines)


def test_sync_bn_needs_cuda(images, tmp_path):
    with pytest.raises(ValueError, match="CUDA only"):
        train(_config(images, tmp_path, sync_bn=True))


def test_missing_vgg_weights(images, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"vgg16-397923af\.pth"):
        train(_config(images, tmp_path, vgg=str(tmp_path / "vgg16-397923af.pth")))


def test_too_few_samples_for_a_batch(images, tmp_path):
    with pytest.raises(ValueError, match="samples-per-epoch"):
        train(_config(images, tmp_path, samples_per_epoch=1))


def test_save_grid_rows(tmp_path):
    rows = [("first", torch.zeros(3, 3, 8, 8)), ("second", torch.ones(3, 3, 8, 8))]
    save_grid(tmp_path / "grid.png", rows, gap=2, zoom=2)
    grid = read_image(tmp_path / "grid.png")
    assert grid.shape[-2] == 2 * 16 + 2
    assert (grid[:, 18:, -16:] == 1).all() and (grid[:, :16, -16:] == 0).all()


# DistributedDataParallel --------------------------------------------------------------------------

WORLD = 2


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_config(images: str, out: Path, batch: int) -> TrainConfig:
    # No BatchNorm: per-rank batch statistics differ from the global batch's by design.
    return _config(Path(images), out, batch=batch, steps=2, batch_norm=False, samples_per_epoch=8, lr=0.05)


def _sgd(monkeypatch_target: object) -> None:
    """Adam's first steps are lr·sign(g), which turns rounding in near-zero gradients into whole
    steps; plain SGD keeps the comparison of updates proportional to the gradients."""
    torch.optim.Adam = torch.optim.SGD  # type: ignore[misc]  # this process only (a spawned worker)


def _worker(rank: int, port: int, images: str, root: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD)
    )
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    _sgd(None)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        # Every rank is given its own folder: only rank 0 may create or write to it.
        train(_ddp_config(images, Path(root) / f"rank{rank}", batch=2))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="no gloo")
def test_ddp_two_processes_equal_one_over_the_global_batch(images, tmp_path, monkeypatch):
    mp.spawn(_worker, args=(_free_port(), str(images), str(tmp_path)), nprocs=WORLD, join=True)
    assert not (tmp_path / "rank1").exists()  # rank 1 wrote nothing
    assert {p.name for p in (tmp_path / "rank0").iterdir()} >= {CHECKPOINT, "log.jsonl", "grid_0000002.png"}

    monkeypatch.setattr(torch.optim, "Adam", torch.optim.SGD)
    train(_ddp_config(str(images), tmp_path / "single", batch=4))
    ddp, single = _state(tmp_path / "rank0"), _state(tmp_path / "single")
    eps = torch.finfo(torch.float32).eps
    for name, value in single["model"].items():
        scale = value.abs().max().item()
        torch.testing.assert_close(ddp["model"][name], value, rtol=0, atol=64 * eps * scale, msg=name)
    # The logged losses are the mean over the ranks: the global batch's loss.
    ddp_log = [json.loads(x) for x in (tmp_path / "rank0" / "log.jsonl").read_text().splitlines()]
    single_log = [json.loads(x) for x in (tmp_path / "single" / "log.jsonl").read_text().splitlines()]
    for a, b in zip(ddp_log, single_log, strict=True):
        assert a["total"] == pytest.approx(b["total"], rel=1e-5)


def test_cuda_grad_scaler_falls_back_to_torch_cuda_amp(monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    from torch_pconv.inpainting.train import cuda_grad_scaler

    # torch 2.1 and 2.2 have no torch.amp.GradScaler.
    assert not cuda_grad_scaler(enabled=False).is_enabled()
    monkeypatch.delattr(torch.amp, "GradScaler", raising=False)
    with warnings.catch_warnings():  # newer torch deprecates torch.cuda.amp.GradScaler
        warnings.simplefilter("ignore", FutureWarning)
        scaler = cuda_grad_scaler(enabled=False)
    assert not scaler.is_enabled()
