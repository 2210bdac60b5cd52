"""Distributed training: DistributedDataParallel (gloo, two CPU processes) gives what one process
gives over the global batch.

nn.DataParallel's replication and deep copies, which concern the mask=None cache, are in
test_cache.py."""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import seeded
from torch import Tensor, nn

from torch_pconv import PConv2d

EPS = torch.finfo(torch.float32).eps
GLOBAL_BATCH, WORLD, STEPS, LR = 4, 2, 3, 0.1


class Net(nn.Module):
    """Two partial convolutions carrying the mask, then one in padding mode (mask None)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = PConv2d(3, 8, 3, padding=1)
        self.c2 = PConv2d(8, 8, 3, padding=1, stride=2)
        self.c3 = PConv2d(8, 1, 3, padding=1, return_mask=False)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x, mask = self.c1(x, mask)
        x, _ = self.c2(torch.relu(x), mask)
        return self.c3(torch.relu(x))


def _net() -> Net:
    torch.manual_seed(0)
    return Net()


def _global_batch() -> tuple[Tensor, Tensor, Tensor]:
    """Images, (B, 1, H, W) masks with a hole wider than the kernel, and targets."""
    g = seeded(1)
    x = torch.randn(GLOBAL_BATCH, 3, 12, 12, generator=g)
    mask = (torch.rand(GLOBAL_BATCH, 1, 12, 12, generator=g) >= 0.3).float()
    mask[:, :, 2:8, 3:9] = 0
    target = torch.randn(GLOBAL_BATCH, 1, 6, 6, generator=g)
    return x, mask, target


def _train(model: nn.Module, x: Tensor, mask: Tensor, target: Tensor) -> list[dict[str, Tensor]]:
    """STEPS of SGD on a mean loss; the gradients of every step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    grads = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        F.mse_loss(model(x, mask), target).backward()
        # DDP names its module's parameters "module.<name>".
        grads.append({name.removeprefix("module."): p.grad.clone() for name, p in model.named_parameters()})
        optimizer.step()
    return grads


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # stay on loopback
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    try:
        model = _net()
        ddp = nn.parallel.DistributedDataParallel(model)
        x, mask, target = _global_batch()
        share = slice(rank * GLOBAL_BATCH // WORLD, (rank + 1) * GLOBAL_BATCH // WORLD)
        # A mean loss on each half: DDP averages the gradients, so the mean over the global batch.
        grads = _train(ddp, x[share], mask[share], target[share])
        torch.save({"grads": grads, "state": model.state_dict()}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo unavailable"
)
def test_ddp_matches_single_process_over_the_global_batch(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    single = _net()
    x, mask, target = _global_batch()
    expected_grads = _train(single, x, mask, target)

    # The ranks all-reduce the same gradients and apply the same steps: identical to each other.
    for other in ranks[1:]:
        for name, value in ranks[0]["state"].items():
            assert torch.equal(other["state"][name], value), name
    # Against one process: each gradient's sum over the batch is split in two, all-reduced and
    # halved, so it is the same sum reassociated: equal within float32 rounding of that sum, which
    # grows with its terms (here B * H' * W' <= 576; the issue reports about 1e-3 absolute on
    # larger inputs). Measured on this net: weight gradients identical, bias gradients within
    # 7e-7 of the largest entry (6 eps), final weights identical. Tolerance: 64 eps (7.6e-6) of
    # the largest entry of each gradient, and of each parameter after STEPS steps of lr 0.1.
    for step, expected in enumerate(expected_grads):
        for name, grad in expected.items():
            scale = grad.abs().max().item()
            torch.testing.assert_close(
                ranks[0]["grads"][step][name], grad, rtol=0, atol=64 * EPS * scale, msg=f"step {step} {name}"
            )
    for name, value in single.state_dict().items():
        scale = value.abs().max().item()
        torch.testing.assert_close(ranks[0]["state"][name], value, rtol=0, atol=64 * EPS * scale, msg=name)
