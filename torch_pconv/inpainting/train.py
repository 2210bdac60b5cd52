"""Training: the paper's two phases (Adam at 2e-4, then fine-tuning at 5e-5 with the encoder's
BatchNorm frozen; or a cosine schedule for short runs), on one process or many (``torchrun``:
DistributedDataParallel with a DistributedSampler), with exact resume from checkpoints,
per-term loss logs and PNG grids."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..quirks import cuda_grad_scaler
from .data import InpaintingDataset, list_images, save_grid
from .loss import InpaintingLoss, VGG16Features
from .masks import MaskFolder, MaskGenerator, seeded
from .model import PConvUNet

__all__ = [
    "CHECKPOINT",
    "SCHEDULES",
    "TrainConfig",
    "build_model",
    "learning_rate",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
    "train",
]

CHECKPOINT = "checkpoint.pt"
SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig:
    """Everything a run depends on. Defaults: the paper's optimiser and loss, mmagic's 256×256
    schedule (800k steps, then 500k of fine-tuning), the paper's batch of 6 per process."""

    images: str  # a folder of training images
    out: str = "inpainting-run"  # checkpoints, logs and grids
    masks: str | None = None  # a folder of mask images; None: the generator
    mask_pool: int | None = None  # generator only: draw this many masks, then flip and transpose them
    hole_value: int = 0  # which value marks a hole in the mask images (0 or 255)
    size: int = 256  # crop side
    batch: int = 6  # per process
    steps: int = 800_000  # first phase
    fine_tune_steps: int = 500_000  # second phase, encoder BatchNorm frozen
    lr: float = 2e-4
    fine_tune_lr: float = 5e-5
    # The first phase's learning rate: "constant" (the paper), or "cosine": a linear warm-up over
    # `warmup_steps`, then a cosine decay to 0 at the end of the phase (for short runs).
    schedule: str = "constant"
    warmup_steps: int = 0
    layers: int = 7
    widths: tuple[int, ...] | None = None  # default: the paper's
    kernels: tuple[int, ...] | None = None
    batch_norm: bool = True
    vgg: str | None = "cache"  # VGG-16 weights: a path, "cache" (torch's checkpoint cache), None: no VGG terms
    weights: dict[str, float] = dataclasses.field(default_factory=dict)  # loss weights overriding the paper's
    samples_per_epoch: int | None = None  # default: one crop per image
    cache_images: bool = False  # keep decoded images in memory
    seed: int = 0
    workers: int = 0
    log_every: int = 50
    grid_every: int = 1000
    checkpoint_every: int = 5000
    resume: bool = True  # continue from out/checkpoint.pt when there is one
    amp: bool = False  # autocast (bfloat16 on CPU, float16 with a GradScaler on CUDA)
    sync_bn: bool = False  # SyncBatchNorm across processes (CUDA only)
    device: str | None = None  # default: cuda (this process's LOCAL_RANK) if available, else cpu
    progress: bool = True

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig: schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.mask_pool is not None and self.masks is not None:
            raise ValueError(
                "TrainConfig: mask_pool pools generated masks; with a mask folder (masks=...), leave it None"
            )

    def model_args(self) -> dict[str, Any]:
        return {"layers": self.layers, "widths": self.widths, "kernels": self.kernels, "batch_norm": self.batch_norm}


def build_model(args: dict[str, Any]) -> PConvUNet:
    """A PConvUNet from :meth:`TrainConfig.model_args` (as stored in checkpoints)."""
    return PConvUNet(**args)


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    config: TrainConfig,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Write everything a resume needs, atomically: model, optimiser, scaler, step and the RNG states."""
    path = Path(path)
    state = {
        "model": _unwrap(model).state_dict(),
        "model_args": config.model_args(),
        "fine_tune": _unwrap(model).fine_tune,
        "optimizer": optimizer.state_dict(),
        "scaler": None if scaler is None else scaler.state_dict(),
        "step": step,
        "config": dataclasses.asdict(config),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
        },
    }
    partial = path.with_suffix(".tmp")
    torch.save(state, partial)
    partial.replace(path)  # never a half-written checkpoint, even if killed while saving


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> int:
    """Restore a checkpoint written by :func:`save_checkpoint`; returns its step."""
    state = torch.load(path, map_location="cpu", weights_only=False)  # our own file: it holds Python RNG state
    inner = _unwrap(model)
    own = {name: tuple(value.shape) for name, value in inner.state_dict().items()}
    if own != {name: tuple(value.shape) for name, value in state["model"].items()}:
        # Most often a run started in a folder that holds another run's checkpoint.
        raise ValueError(
            f"{path} holds a network built with {state['model_args']}, which is not this one "
            f"({inner.extra_repr()}): train into another folder, or start afresh (--no-resume)"
        )
    if state["fine_tune"]:
        inner.freeze_encoder_bn()
    inner.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    random.setstate(state["rng"]["python"])
    step: int = state["step"]
    return step


def load_model(path: str | Path, device: str | torch.device = "cpu") -> PConvUNet:
    """The network of a checkpoint, in eval mode, for evaluation and filling."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = build_model(state["model_args"])
    if state["fine_tune"]:
        model.freeze_encoder_bn()
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def train(config: TrainConfig) -> dict[str, Any]:
    """Run (or resume) the two phases; returns the last step's loss terms, the step and the
    seconds spent. Under ``torchrun`` every process runs this; only rank 0 writes files."""
    rank, world, device = _setup(config)
    out = Path(config.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    model = build_model(config.model_args()).to(device)
    if config.sync_bn:
        if device.type != "cuda":
            raise ValueError("--sync-bn: SyncBatchNorm runs on CUDA only")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[no-untyped-call]
    loss_fn = _build_loss(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scaler = cuda_grad_scaler(enabled=config.amp and device.type == "cuda")
    step = 0
    if config.resume and (out / CHECKPOINT).is_file():
        step = load_checkpoint(out / CHECKPOINT, model, optimizer, scaler)
    dataset = _build_dataset(config)
    sampler: DistributedSampler[Any] = DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=True, seed=config.seed, drop_last=True
    )
    steps_per_epoch = len(sampler) // config.batch
    if steps_per_epoch == 0:
        raise ValueError(
            f"{len(dataset)} samples per epoch over {world} process(es) make no batch of {config.batch}: "
            "raise --samples-per-epoch or lower --batch"
        )
    total = config.steps + config.fine_tune_steps
    bar = _progress(total, step, enabled=config.progress and rank == 0)
    log = _open_log(out / "log.jsonl", step) if rank == 0 else None
    start, phase = time.perf_counter(), ""
    terms: dict[str, float] = {}
    wrapped: nn.Module = model
    try:
        while step < total:
            if phase != ("fine_tune" if step >= config.steps else "train"):
                phase = "fine_tune" if step >= config.steps else "train"
                if phase == "fine_tune":
                    _unwrap(model).freeze_encoder_bn()
                # DDP registers the parameters that need gradients when it is built: rebuild it
                # once the encoder's BatchNorm parameters are frozen.
                wrapped = nn.parallel.DistributedDataParallel(model) if world > 1 else model
            epoch, position = divmod(step, steps_per_epoch)
            loader = _loader(dataset, sampler, epoch, position, config)
            end = config.steps if step < config.steps else total
            for image, mask in loader:
                image, mask = image.to(device), mask.to(device)
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(config, step)
                output, terms = _step(wrapped, loss_fn, optimizer, scaler, image, mask, config.amp, device)
                step += 1
                bar.update(1)
                if step % config.log_every == 0 or step == total:
                    terms = _mean_over_processes(terms, world)
                    bar.set_postfix({k: f"{v:.4f}" for k, v in terms.items()}, refresh=False)
                    if log is not None:
                        log.write(json.dumps({"step": step, "phase": phase, **terms}) + "\n")
                        log.flush()
                if rank == 0 and (step % config.grid_every == 0 or step == total):
                    _grid(out / f"grid_{step:07d}.png", image, mask, output)
                if rank == 0 and (step % config.checkpoint_every == 0 or step == total or step == config.steps):
                    save_checkpoint(out / CHECKPOINT, model, optimizer, step, config, scaler)
                if step == end:
                    break
    finally:
        bar.close()
        if log is not None:
            log.close()
    return {"step": step, "seconds": time.perf_counter() - start, **{k: float(v) for k, v in terms.items()}}


def learning_rate(config: TrainConfig, step: int) -> float:
    """The learning rate of step ``step`` (from 0): a function of the step alone, so that a
    resumed run follows the schedule of an uninterrupted one without any saved state."""
    if step >= config.steps:
        return config.fine_tune_lr
    if config.schedule == "constant":
        return config.lr
    warmup = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps > 0 else 1.0
    return config.lr * warmup * 0.5 * (1 + math.cos(math.pi * step / config.steps))


def _step(
    model: nn.Module,
    loss_fn: InpaintingLoss,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    image: Tensor,
    mask: Tensor,
    amp: bool,
    device: torch.device,
) -> tuple[Tensor, dict[str, float]]:
    """One optimiser step; returns the output and the (detached) loss terms."""
    model.train()
    half = torch.float16 if device.type == "cuda" else torch.bfloat16
    with torch.autocast(device.type, dtype=half, enabled=amp):
        output = model(image * mask, mask)
        terms = loss_fn(output, image, mask)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(terms["total"]).backward()
    scaler.step(optimizer)
    scaler.update()
    return output.detach(), {name: float(value.detach()) for name, value in terms.items()}


def _loader(
    dataset: InpaintingDataset, sampler: DistributedSampler[Any], epoch: int, position: int, config: TrainConfig
) -> DataLoader[tuple[Tensor, Tensor]]:
    """The batches of ``epoch`` from batch ``position`` on: resuming mid-epoch loads no skipped batch."""
    sampler.set_epoch(epoch)
    dataset.set_epoch(epoch)
    indices = list(sampler)
    batches = [indices[i : i + config.batch] for i in range(0, len(indices) - config.batch + 1, config.batch)]
    # A generator of our own: otherwise every new DataLoader draws its workers' base seed from the
    # global RNG, and a resumed run would leave that RNG elsewhere than an uninterrupted one.
    generator = seeded(config.seed, epoch)
    return DataLoader(dataset, batch_sampler=batches[position:], num_workers=config.workers, generator=generator)


def _build_loss(config: TrainConfig) -> InpaintingLoss:
    extractor = None if config.vgg is None else VGG16Features(config.vgg)
    return InpaintingLoss(extractor, **config.weights)


def _build_dataset(config: TrainConfig) -> InpaintingDataset:
    images = list_images(config.images)
    masks: Dataset[Tensor]
    if config.masks is None:
        masks = MaskGenerator(config.size, length=100_000, seed=config.seed + 1, pool=config.mask_pool)
    else:
        masks = MaskFolder(config.masks, config.size, hole_value=config.hole_value, seed=config.seed + 1)
    return InpaintingDataset(
        images, masks, config.size, length=config.samples_per_epoch, seed=config.seed, cache=config.cache_images
    )


def _setup(config: TrainConfig) -> tuple[int, int, torch.device]:
    """Rank, world size and device; joins the process group under torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    name = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    return rank, world, device


def _open_log(path: Path, step: int) -> TextIO:
    """The run's log, keeping the lines of the steps up to ``step`` (the checkpoint resumed from;
    none for a fresh run): a resumed run's log reads as an uninterrupted one's, with no line of
    the steps it repeats."""
    kept = []
    if step and path.is_file():
        kept = [line for line in path.read_text().splitlines(keepends=True) if json.loads(line)["step"] <= step]
    file = path.open("w")
    file.writelines(kept)
    return file


def _mean_over_processes(terms: dict[str, float], world: int) -> dict[str, float]:
    if world == 1:
        return terms
    values = torch.tensor(list(terms.values()), dtype=torch.float64)
    dist.all_reduce(values)
    return dict(zip(terms, (values / world).tolist(), strict=True))


def _grid(path: Path, image: Tensor, mask: Tensor, output: Tensor, count: int = 6) -> None:
    image, mask, output = image[:count].float(), mask[:count].float(), output[:count].float()
    save_grid(
        path,
        [
            ("masked input", image * mask + (1 - mask)),  # holes in white
            ("output", output),
            ("composite", mask * image + (1 - mask) * output),
            ("ground truth", image),
        ],
    )


def _unwrap(model: nn.Module) -> PConvUNet:
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    assert isinstance(inner, PConvUNet)
    return inner


class _NoBar:
    """What stands in for tqdm: nothing, or (``lines=True``, tqdm missing) one line per log step."""

    def __init__(self, lines: bool = False) -> None:
        self.lines, self.step = lines, 0

    def update(self, n: int = 1) -> None:
        self.step += n

    def set_postfix(self, values: dict[str, str], refresh: bool = True) -> None:
        if self.lines:
            print(f"step {self.step}: " + ", ".join(f"{k} {v}" for k, v in values.items()), flush=True)

    def close(self) -> None: ...


def _progress(total: int, initial: int, enabled: bool) -> Any:
    """A tqdm bar when wanted and tqdm is installed (the bench extra); without tqdm, a line per
    log step; unwanted, nothing."""
    if enabled:
        try:
            from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]

            return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
        except ImportError:
            bar = _NoBar(lines=True)
            bar.step = initial
            return bar
    return _NoBar()
