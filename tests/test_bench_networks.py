"""The bench's whole networks: the twins hold the same weights and compute what ours computes, the
classifier's twin is NVIDIA's layer in every convolution, convert's variant keeps unpadded 1×1
convolutions plain, and a tiny run of both configs gives their rows. Tiny sizes; no assertion
depends on how fast anything ran."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torch_pconv import PartialConv2d, PConv2d, reference
from torch_pconv.bench import cli, networks, records, report, training
from torch_pconv.bench.configs import CONFIGS, STEP, Settings
from torch_pconv.bench.impls import CLASSIFIER_IMPLS, UNET_BFLOAT16, UNET_IMPLS, Impl, conv_of, network_impls, nvidia_of
from torch_pconv.bench.run import plan, run_bench, ticks

# A 3-layer U-Net at 16×16 and the ResNet-50 at its smallest, 32×32 (a batch of 2: BatchNorm in
# training needs two values per channel where the last stage is 1×1). No compiled or bfloat16 rows.
UNET = replace(CONFIGS["unet"], batch=2, size=16, layers=3, compiled=False, bfloat16=False, quick=None)
CLASSIFIER = replace(CONFIGS["classifier"], batch=2, size=32, quick=None)
FAST = Settings(repeats=2, warmup=0)


def _nets(config: Any, rows: list[Impl]) -> dict[str, nn.Module]:
    return {impl.name: networks.build(config.network, impl, config.layers, seed=0) for impl in rows}


def _convs(net: nn.Module) -> list[nn.Module]:
    return [module for module in net.modules() if isinstance(module, nn.Conv2d)]


@pytest.mark.parametrize(("config", "rows"), [(UNET, UNET_IMPLS), (CLASSIFIER, CLASSIFIER_IMPLS)])
def test_every_row_holds_the_same_weights(config: Any, rows: list[Impl]) -> None:
    nets = _nets(config, rows)
    ours = nets[rows[1].name].state_dict()
    for name, net in nets.items():
        state = net.state_dict()
        assert state.keys() == ours.keys(), name
        assert all(torch.equal(state[key], ours[key]) for key in ours), name


def test_unet_twins_are_built_of_their_layers() -> None:
    nets = _nets(UNET, UNET_IMPLS)
    plain, ours, nvidia = (_convs(nets[impl.name]) for impl in UNET_IMPLS)
    assert len(plain) == len(ours) == len(nvidia) == 2 * UNET.layers
    assert all(type(conv) is nn.Conv2d for conv in plain)
    assert all(type(conv) is PConv2d and conv.multi_channel for conv in ours)
    assert all(type(conv) is reference.PartialConv2d for conv in nvidia)
    assert all(conv.multi_channel and conv.return_mask for conv in nvidia)
    assert type(nets[UNET_IMPLS[1].name]).__name__ == "PConvUNet"


class _IgnoresTheMask(nn.Module):
    """A U-Net block's convolution as nn.Conv2d, passing on a mask of the output's size."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.conv(x)
        return out, F.interpolate(mask, size=out.shape[-2:])


def test_plain_unet_is_the_unet_with_plain_convolutions() -> None:
    nets = _nets(UNET, UNET_IMPLS[:2])
    plain, ours = nets["nn.Conv2d"], nets["PConv2d multi_channel"]
    blocks = [(name, module) for name, module in ours.named_modules() if name.count(".") == 1]  # encoder.0, ...
    assert len(blocks) == 2 * UNET.layers
    for name, block in blocks:
        block.conv = _IgnoresTheMask(plain.get_submodule(f"{name}.conv"))
    batch = training.make_batch(UNET, UNET.batch, UNET.size, torch.float32, "cpu", seed=0)
    assert torch.equal(plain(batch.x), ours(batch.x, batch.mask))


def test_unet_agrees_with_nvidias_twin_in_float64() -> None:
    errors = training.agreement(UNET, _nets(UNET, UNET_IMPLS), UNET_IMPLS, seed=0)
    assert set(errors) == {"PConv2d multi_channel"}
    output, gradients = errors["PConv2d multi_channel"]
    assert output <= 1e-12 and gradients <= 1e-12
    assert training.CHECKS["unet"].dtype == torch.float64


def test_classifier_twin_is_nvidias_layer_in_every_convolution() -> None:
    nets = _nets(CLASSIFIER, CLASSIFIER_IMPLS)
    plain, ours, converted, nvidia = (_convs(nets[impl.name]) for impl in CLASSIFIER_IMPLS)
    assert len(plain) == len(ours) == len(converted) == len(nvidia) == 53  # ResNet-50's convolutions
    assert all(type(conv) is nn.Conv2d for conv in plain)
    assert all(type(conv) is PartialConv2d and not conv.return_mask for conv in ours)
    assert all(type(conv) is reference.PartialConv2d and not conv.multi_channel for conv in nvidia)
    assert all(conv.bias is None for conv in [*plain, *ours, *nvidia])


def test_convert_keeps_unpadded_1x1_convolutions_plain() -> None:
    converted = _convs(_nets(CLASSIFIER, CLASSIFIER_IMPLS[2:3])["PartialConv2d, convert"])
    padded = [conv for conv in converted if conv.padding != (0, 0)]
    unpadded = [conv for conv in converted if conv.padding == (0, 0)]
    assert len(padded) == 17 and all(type(conv) is PartialConv2d for conv in padded)  # the stem and the 3×3s
    assert len(unpadded) == 36 and all(type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) for conv in unpadded)


def test_classifier_agrees_bit_for_bit_in_float32_and_in_float64() -> None:
    nets = _nets(CLASSIFIER, CLASSIFIER_IMPLS)
    assert training.agreement(CLASSIFIER, nets, CLASSIFIER_IMPLS, seed=0) == {
        "PartialConv2d": (0.0, 0.0),
        "PartialConv2d, convert": (0.0, 0.0),
    }
    # In float64 every-conv PartialConv2d still reproduces NVIDIA's arithmetic, eps included.
    rows = [CLASSIFIER_IMPLS[1], CLASSIFIER_IMPLS[3]]
    check = training.CHECKS["classifier"]._replace(dtype=torch.float64, tolerance=1e-12)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(training.CHECKS, "classifier", check)
        ((output, gradients),) = training.agreement(CLASSIFIER, nets, rows, seed=0).values()
    assert output <= 1e-12 and gradients <= 1e-12


def test_rows_are_paired_with_their_own_conv_and_nvidia() -> None:
    assert [conv_of(impl).name for impl in UNET_BFLOAT16] == ["nn.Conv2d, bfloat16"] * 3
    assert nvidia_of(UNET_BFLOAT16[1]) == "NVIDIA multi_channel, bfloat16"
    assert [nvidia_of(impl) for impl in CLASSIFIER_IMPLS[1:]] == ["NVIDIA single"] * 3
    full = network_impls(CONFIGS["unet"])
    assert [impl.name for impl in full][-2:] == ["nn.Conv2d (compiled)", "PConv2d multi_channel (compiled)"]
    assert network_impls(CONFIGS["unet"].scaled(full=False)) == UNET_IMPLS  # the default run: float32, eager


def test_a_tiny_run_of_both_configs_gives_their_rows() -> None:
    calls = []
    run = run_bench([UNET, CLASSIFIER], FAST, tick=lambda: calls.append(1))
    assert len(calls) == ticks(plan([UNET, CLASSIFIER], FAST)[0], FAST)  # the progress bar's total
    names = [(row.config.name, row.impl.name) for row in run.rows]
    assert names == [("unet", impl.name) for impl in UNET_IMPLS] + [("classifier", i.name) for i in CLASSIFIER_IMPLS]
    for row in run.rows:
        assert len(row.times[STEP].seconds) == FAST.repeats
        assert set(row.memory) <= {"held forward→backward", "peak forward+backward"}
        checked = row.impl.kind in ("pconv", "drop_in", "convert")
        assert (row.error is not None) == checked and (row.grad_error is not None) == checked
    recs = records.records(run)
    get = {(r["config"], r["implementation"], r["metric"]): r for r in recs}
    assert get[("classifier", "nn.Conv2d", f"time {STEP}")]["ratio_to_conv"] == 1.0
    assert get[("unet", "PConv2d multi_channel", f"time {STEP}")]["ratio_to_nvidia"] > 0
    assert any(note.startswith("unet: NVIDIA's twin also keeps") for note in run.notes)
    text = report.format_report(run, recs, records.environment(run), run.notes)
    assert "agreement with NVIDIA's twin (float64, B=2, 16×16)" in text
    assert "PartialConv2d: output 0, gradients 0; PartialConv2d, convert: output 0, gradients 0" in text
    assert "WARNING" not in text


def test_a_batch_too_small_for_batchnorm_is_refused_before_the_run() -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    why = cli.problem(parser.parse_args(["--configs", "classifier", "unet", "--batch", "1"]))
    assert why is not None and why.startswith("--batch 1: unet at 128×128 ends in 1×1 features")
    assert cli.problem(parser.parse_args(["--configs", "unet", "--batch", "1", "--full"])) is None  # 2×2 at 256


def test_unet_rows_compiled_with_a_stand_in_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: model)
    run = run_bench([replace(UNET, compiled=True)], FAST)
    names = [row.impl.name for row in run.rows]
    assert names[-2:] == ["nn.Conv2d (compiled)", "PConv2d multi_channel (compiled)"]
    get = {(r["implementation"], r["metric"]): r for r in records.records(run)}
    assert get[("nn.Conv2d (compiled)", f"time {STEP}")]["ratio_to_conv"] == 1.0  # its own conv


def test_a_compile_that_fails_leaves_the_compiled_rows_out(monkeypatch: pytest.MonkeyPatch) -> None:
    class FailsWhenCalled(nn.Module):  # as torch.compile fails: at the first call
        def forward(self, *args: Any) -> Any:
            raise RuntimeError("no compiler here\nmore detail")

    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: FailsWhenCalled())
    run = run_bench([replace(UNET, compiled=True)], FAST)
    assert [row.impl.name for row in run.rows] == [impl.name for impl in UNET_IMPLS]
    failed = "torch.compile of nn.Conv2d (compiled) failed (RuntimeError: no compiler here)"
    assert f"unet's compiled rows not measured: {failed}" in run.notes


def test_bfloat16_rows_this_cpu_convolves_slowly_are_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch_pconv.bench import run as run_module

    monkeypatch.setattr(run_module, "_slow_precision", lambda config, settings: "this CPU is slow at it")
    run = run_bench([replace(UNET, bfloat16=True)], FAST)
    assert [row.impl.name for row in run.rows] == [impl.name for impl in UNET_IMPLS]
    assert "unet's bfloat16 rows not measured: this CPU is slow at it" in run.notes


def test_unet_without_the_inpainting_extra_is_one_note(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m.startswith("torch_pconv.inpainting")]:
        monkeypatch.delitem(sys.modules, name)  # put back after the test
    monkeypatch.setitem(sys.modules, "PIL", None)  # import PIL raises ImportError
    run = run_bench([UNET], FAST)
    assert run.rows == []
    (note,) = run.notes
    assert note == 'unet not measured: torch_pconv.inpainting needs Pillow: pip install "torch_pconv[inpainting]"'
