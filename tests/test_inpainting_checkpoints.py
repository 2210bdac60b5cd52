"""Training checkpoints hold tensors and plain values only, and load_model and load_checkpoint
read them with torch.load(weights_only=True): a crafted file is refused before its payload runs."""

from __future__ import annotations

import builtins
import random
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("PIL")
pytest.importorskip("pytorch_msssim")

from torch_pconv.inpainting import PConvUNet, TrainConfig, load_checkpoint, load_model, save_checkpoint
from torch_pconv.inpainting.train import CheckpointError

ARGS: dict[str, Any] = {"layers": 2, "widths": (4, 8), "kernels": (3, 3), "batch_norm": True}


def _config(tmp_path: Path, paths: bool = True) -> TrainConfig:
    # Paths rather than strings by default: what a caller of the Python API may well pass.
    images, out = tmp_path / "images", tmp_path / "run"
    if not paths:
        return TrainConfig(images=str(images), out=str(out), vgg=None, **ARGS)
    return TrainConfig(images=images, out=out, vgg=None, **ARGS)  # type: ignore[arg-type]


def _trained(tmp_path: Path, paths: bool = True) -> tuple[PConvUNet, torch.optim.Optimizer, TrainConfig]:
    """A tiny network after one Adam step (so that the optimiser has state), and its config."""
    torch.manual_seed(0)
    model = PConvUNet(**ARGS)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    image = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 1, 8, 8)
    mask[:, :, 2:5, 3:6] = 0
    model(image * mask, mask).abs().mean().backward()
    optimizer.step()
    return model, optimizer, _config(tmp_path, paths)


class _Payload:
    """Unpickled, this would run ``exec``: it writes ``sentinel``."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return builtins.exec, (f"open({str(self.sentinel)!r}, 'w').write('the payload ran')",)


def _crafted(tmp_path: Path) -> tuple[Path, Path]:
    """A well-formed checkpoint with a payload hidden in its config."""
    model, optimizer, config = _trained(tmp_path, paths=False)
    path, sentinel = tmp_path / "crafted.pt", tmp_path / "sentinel"
    save_checkpoint(path, model, optimizer, 1, config)
    state = torch.load(path, weights_only=True)
    state["config"]["images"] = _Payload(sentinel)
    torch.save(state, path)
    return path, sentinel


@pytest.mark.parametrize("loader", ["load_model", "load_checkpoint"])
def test_a_crafted_checkpoint_is_refused_and_its_payload_never_runs(tmp_path, loader):
    path, sentinel = _crafted(tmp_path)
    with pytest.raises(ValueError, match=r"refused to load this checkpoint.*exec.*could run any code"):
        if loader == "load_model":
            load_model(path)
        else:
            load_checkpoint(path, PConvUNet(**ARGS))
    assert not sentinel.exists()


def test_checkpoints_hold_only_tensors_and_plain_values(tmp_path):
    model, optimizer, config = _trained(tmp_path)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model, optimizer, 7, config)
    state = torch.load(path, weights_only=True)  # the file's own test, whatever the loaders do
    assert state["config"]["images"] == str(tmp_path / "images")  # paths saved as strings
    assert state["config"]["widths"] == (4, 8)
    python = state["rng"]["python"]
    assert python["state"].dtype == torch.int64 and python["state"].shape == (625,)
    assert state["rng"]["torch"].dtype == torch.uint8
    loaded = load_model(path)
    assert not loaded.training
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_load_checkpoint_restores_every_random_state(tmp_path):
    model, optimizer, config = _trained(tmp_path)
    path = tmp_path / "checkpoint.pt"
    random.seed(3)
    random.gauss(0, 1)  # leaves a second Gaussian in the state (gauss_next)
    torch.manual_seed(4)
    save_checkpoint(path, model, optimizer, 5, config)
    expected = (random.random(), random.gauss(0, 1), torch.rand(3))
    random.seed(99)
    torch.manual_seed(99)
    fresh = PConvUNet(**ARGS)
    fresh_optimizer = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    assert load_checkpoint(path, fresh, fresh_optimizer) == 5
    assert random.random() == expected[0] and random.gauss(0, 1) == expected[1]
    assert torch.equal(torch.rand(3), expected[2])
    assert fresh_optimizer.state_dict()["state"][0]["step"] == 1


def test_old_checkpoints_with_a_python_rng_tuple_still_load(tmp_path):
    # Checkpoints written before this format kept random.getstate() itself, a tuple of ints:
    # weights_only=True reads them, and load_checkpoint restores the state from them.
    model, optimizer, config = _trained(tmp_path)
    path = tmp_path / "old.pt"
    save_checkpoint(path, model, optimizer, 2, config)
    state = torch.load(path, weights_only=True)
    random.seed(5)
    state["rng"]["python"] = random.getstate()
    torch.save(state, path)
    expected = random.random()
    random.seed(6)
    assert load_checkpoint(path, PConvUNet(**ARGS)) == 2
    assert random.random() == expected


def test_old_checkpoints_with_paths_say_what_to_do(tmp_path):
    # The old save_checkpoint kept a TrainConfig's pathlib paths as they were: such a file
    # cannot load with weights_only=True, and the error says how to convert it.
    model, optimizer, config = _trained(tmp_path)
    path = tmp_path / "old.pt"
    save_checkpoint(path, model, optimizer, 2, config)
    state = torch.load(path, weights_only=True)
    state["config"]["images"] = Path(state["config"]["images"])
    torch.save(state, path)
    with pytest.raises(
        ValueError, match=r"(?s)pathlib paths.*only then.*weights_only turned off.*by strings.*torch\.save"
    ):
        load_model(path)


def test_a_state_dict_is_not_a_checkpoint(tmp_path):
    torch.save(PConvUNet(**ARGS).state_dict(), tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match=r"is not a checkpoint of `inpaint train`: it lacks model, model_args"):
        load_model(tmp_path / "weights.pt")
