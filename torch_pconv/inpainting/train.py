"""Training: the paper's two phases (Adam at 2e-4, then fine-tuning at 5e-5 with the encoder's
BatchNorm frozen; or a cosine schedule for short runs), on one process or many (``torchrun``:
DistributedDataParallel with a DistributedSampler), with exact resume from checkpoints,
per-term loss logs and PNG grids."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import random
import re
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .._progress import Progress
from .data import InpaintingDataset, list_images, save_grid, seeded, verify_images
from .loss import InpaintingLoss, VGG16Features
from .masks import MaskFolder, MaskGenerator
from .model import PConvUNet

__all__ = [
    "CHECKPOINT",
    "SCHEDULES",
    "CheckpointError",
    "TrainConfig",
    "UsageError",
    "build_model",
    "check_resume",
    "learning_rate",
    "load_checkpoint",
    "load_model",
    "peek_checkpoint",
    "resolve_device",
    "save_checkpoint",
    "train",
]

CHECKPOINT = "checkpoint.pt"
SCHEDULES = ("constant", "cosine")


class UsageError(ValueError):
    """A setting that cannot work, or a file or folder named by one that is not there, found
    before a run writes anything; the message names the setting and what to do. The command
    line answers it in one line, with exit status 2."""


class CheckpointError(ValueError):
    """A file that is not a checkpoint written by :func:`save_checkpoint`, or a damaged one."""


@dataclass
class TrainConfig:
    """Everything a run depends on. Defaults: the paper's optimiser and loss, mmagic's 256×256
    schedule (800k steps, then 500k of fine-tuning), the paper's batch of 6 per process. The
    ``train`` command's options are these fields, with these defaults.

    Raises:
        UsageError: (a ValueError) an unknown ``schedule``, or ``mask_pool`` with ``masks``.

    Examples:
        >>> from torch_pconv.inpainting import TrainConfig
        >>> config = TrainConfig(images="photos", steps=20_000, schedule="cosine")
        >>> config.lr, config.batch, config.model_args()
        (0.0002, 6, {'layers': 7, 'widths': None, 'kernels': None, 'batch_norm': True})
    """

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
            raise UsageError(f"TrainConfig: schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.mask_pool is not None and self.masks is not None:
            raise UsageError(
                "TrainConfig: mask_pool pools generated masks; with a mask folder (masks=...), leave it None"
            )

    def model_args(self) -> dict[str, Any]:
        """The arguments of the run's :class:`PConvUNet` (what a checkpoint stores to rebuild it)."""
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
    """Write everything a resume needs, atomically: model, optimiser, scaler, step and the RNG states.

    The file holds tensors and plain values (dicts, lists, tuples, strings, numbers, None) only,
    so that :func:`load_checkpoint` and :func:`load_model` read it with
    ``torch.load(weights_only=True)``, which runs no code, on every supported torch.

    Args:
        path: the file (written beside it first, then renamed: never half-written).
        model: the network, built from ``config.model_args()`` (or wrapped in DDP).
        optimizer: its optimiser.
        step: the steps done.
        config: the run's settings (a resume is checked against them).
        scaler: the GradScaler of a mixed-precision run on CUDA.

    Raises:
        OSError: the file cannot be written.

    Examples:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from torch_pconv.inpainting import PConvUNet, TrainConfig
        >>> from torch_pconv.inpainting import load_checkpoint, save_checkpoint
        >>> tmp = tempfile.TemporaryDirectory()
        >>> folder = Path(tmp.name)
        >>> config = TrainConfig(images="photos", layers=2, widths=(4, 8))
        >>> model = PConvUNet(**config.model_args())
        >>> optimizer = torch.optim.Adam(model.parameters())
        >>> path = folder / "checkpoint.pt"
        >>> save_checkpoint(path, model, optimizer, 10, config)
        >>> load_checkpoint(path, model, optimizer)  # its step
        10
        >>> tmp.cleanup()
    """
    path = Path(path)
    version, python_state, gauss_next = random.getstate()
    state = {
        "model": _unwrap(model).state_dict(),
        "model_args": _plain(config.model_args()),
        "fine_tune": _unwrap(model).fine_tune,
        "optimizer": optimizer.state_dict(),
        "scaler": None if scaler is None else scaler.state_dict(),
        "step": step,
        "config": _plain(dataclasses.asdict(config)),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            # Python's Mersenne Twister: 624 words and a position, as int64 (the words are uint32).
            "python": {
                "version": version,
                "state": torch.tensor(python_state, dtype=torch.int64),
                "gauss_next": gauss_next,
            },
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
    """Restore a checkpoint written by :func:`save_checkpoint` into ``model`` (and ``optimizer``
    and ``scaler``, when given), with the RNG states of torch, CUDA and Python; returns its step.

    Read with ``torch.load(weights_only=True)``: a file that holds anything but tensors and
    plain values is refused (a :class:`CheckpointError`) before any of it runs.

    Args:
        path: a file of :func:`save_checkpoint`.
        model: the network to load into (or its DDP wrapper), built from the same
            ``model_args``; it is put in fine-tuning if the checkpoint is.
        optimizer: its optimiser; None: the weights alone.
        scaler: the run's GradScaler, if any.

    Returns:
        The checkpoint's step.

    Raises:
        CheckpointError: (a ValueError) the file is not such a checkpoint, or is damaged.
        ValueError: the checkpoint holds another network than ``model``.
        FileNotFoundError: there is no file at ``path``.

    Examples:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from torch_pconv.inpainting import PConvUNet, TrainConfig
        >>> from torch_pconv.inpainting import load_checkpoint, save_checkpoint
        >>> tmp = tempfile.TemporaryDirectory()
        >>> folder = Path(tmp.name)
        >>> config = TrainConfig(images="photos", layers=2, widths=(4, 8))
        >>> model = PConvUNet(**config.model_args())
        >>> path = folder / "checkpoint.pt"
        >>> save_checkpoint(path, model, torch.optim.Adam(model.parameters()), 10, config)
        >>> copy = PConvUNet(**config.model_args())
        >>> load_checkpoint(path, copy)  # the weights alone; returns the step
        10
        >>> torch.equal(copy.encoder[0].conv.weight, model.encoder[0].conv.weight)
        True
        >>> tmp.cleanup()
    """
    state = _read_checkpoint(path)
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
    python = state["rng"]["python"]
    if isinstance(python, dict):
        random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss_next"]))
    else:  # checkpoints written before the int64 tensor: random.getstate()'s tuple of ints
        random.setstate(tuple(python))
    step: int = state["step"]
    return step


def load_model(path: str | Path, device: str | torch.device = "cpu") -> PConvUNet:
    """The network of a checkpoint, built as it was trained, on ``device``, in eval mode, for
    evaluation and filling.

    Read with ``torch.load(weights_only=True)``, as :func:`load_checkpoint` reads it.

    Args:
        path: a file of :func:`save_checkpoint`.
        device: where to put the network.

    Raises:
        CheckpointError: (a ValueError) the file is not such a checkpoint, or is damaged.
        FileNotFoundError: there is no file at ``path``.

    Examples:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from torch_pconv.inpainting import PConvUNet, TrainConfig, load_model, save_checkpoint
        >>> tmp = tempfile.TemporaryDirectory()
        >>> folder = Path(tmp.name)
        >>> config = TrainConfig(images="photos", layers=2, widths=(4, 8))
        >>> model = PConvUNet(**config.model_args())
        >>> path = folder / "checkpoint.pt"
        >>> save_checkpoint(path, model, torch.optim.Adam(model.parameters()), 10, config)
        >>> loaded = load_model(path)
        >>> loaded.widths, loaded.training
        ((4, 8), False)
        >>> tmp.cleanup()
    """
    state = _read_checkpoint(path)
    model = build_model(state["model_args"])
    if state["fine_tune"]:
        model.freeze_encoder_bn()
    model.load_state_dict(state["model"])
    return model.to(device).eval()


# What a checkpoint of save_checkpoint holds, at least.
_CHECKPOINT_ENTRIES = ("model", "model_args", "fine_tune", "step", "config")


def _read_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """A checkpoint's contents, read with ``weights_only=True``: tensors and plain values only,
    nothing that unpickling could run. ``mmap``: tensors are read only when used.

    Raises:
        CheckpointError: the file is not such a checkpoint, is damaged, or holds other objects.
        FileNotFoundError: there is no file at ``path``."""
    what = f"{path} is not a checkpoint of `inpaint train`"
    if Path(path).is_file() and not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise CheckpointError(f"{what}: not a file written by torch.save")
    try:
        # A str: torch 2.1 memory-maps only a file named by one.
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        found = re.search(r"WeightsUnpickler error: (.*?)(?:\.\s|\n|$)", str(error))
        raise CheckpointError(
            f"{path}: refused to load this checkpoint: it holds objects other than tensors and plain values "
            f"({found.group(1) if found else error}), and unpickling them could run any code. Checkpoints "
            "written by torch_pconv hold none. Load only files from a source you trust. One written by an "
            "older torch_pconv from a TrainConfig holding pathlib paths holds Path objects: if you wrote it "
            "yourself (and only then: unpickling runs what the file holds), load it once with torch.load and "
            "weights_only turned off, replace the paths in its 'config' by strings, and torch.save it again."
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{what}, or is damaged ({type(error).__name__}: {_first_line(error)})") from None
    missing = [key for key in _CHECKPOINT_ENTRIES if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(f"{what}: it lacks {', '.join(missing)}")
    assert isinstance(state, dict)
    return state


def _plain(value: Any) -> Any:
    """``value`` with paths as strings: a checkpoint holds plain values only (see :func:`save_checkpoint`)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def cuda_grad_scaler(enabled: bool) -> Any:
    """A CUDA GradScaler, a no-op when not ``enabled``: ``torch.amp.GradScaler("cuda")`` since
    torch 2.3; before, the same class as ``torch.cuda.amp.GradScaler``."""
    scaler = getattr(torch.amp, "GradScaler", None)
    if scaler is not None:
        return scaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)


def train(config: TrainConfig) -> dict[str, Any]:
    """Run (or resume, from ``config.out``'s checkpoint) the two phases. Under ``torchrun`` every
    process runs this; only rank 0 writes files: ``checkpoint.pt``, ``log.jsonl`` and PNG grids.

    Args:
        config: the run's settings.

    Returns:
        ``{"step", "seconds", ...}``: the last step, the seconds spent and the last step's loss
        terms (as :class:`InpaintingLoss` names them).

    Raises:
        UsageError: (a ValueError) settings that cannot work, folders without images, or a
            checkpoint to resume that was written with other settings; found before any file
            is written.
        CheckpointError: a checkpoint to resume that is not one.
        OSError: an image or mask file that cannot be read (each is opened before the first step).
        VGGWeightsNotFoundError: no VGG-16 weights at ``config.vgg``.

    Examples:
        >>> import tempfile, torch
        >>> from pathlib import Path
        >>> from torch_pconv.inpainting import TrainConfig, train, write_image
        >>> tmp = tempfile.TemporaryDirectory()
        >>> folder = Path(tmp.name)
        >>> for i in range(2):
        ...     write_image(folder / "images" / f"{i}.png", torch.rand(3, 16, 16))
        >>> config = TrainConfig(
        ...     images=str(folder / "images"), out=str(folder / "run"), size=8, batch=2,
        ...     steps=2, fine_tune_steps=1, layers=2, widths=(4, 8), vgg=None,
        ...     device="cpu", progress=False,
        ... )
        >>> result = train(config)
        >>> result["step"], sorted(path.name for path in (folder / "run").iterdir())
        (3, ['checkpoint.pt', 'grid_0000003.png', 'log.jsonl'])
        >>> tmp.cleanup()
    """
    rank, world, device = _setup(config)
    out = Path(config.out)
    # Whatever can be found wrong is found before the first file is written: the settings, the
    # data (every image opens), and a checkpoint to resume that was written with other settings.
    _check_settings(config, device)
    dataset = _checked_dataset(config, rank, world)
    resume = config.resume and (out / CHECKPOINT).is_file()
    if resume:
        check_resume(out / CHECKPOINT, config)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    model = build_model(config.model_args()).to(device)
    if config.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # type: ignore[no-untyped-call]
    loss_fn = _build_loss(config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scaler = cuda_grad_scaler(enabled=config.amp and device.type == "cuda")
    step = 0
    if resume:
        try:
            step = load_checkpoint(out / CHECKPOINT, model, optimizer, scaler)
        except ValueError as error:  # a damaged checkpoint, whose settings read as this run's
            raise CheckpointError(str(error)) from error
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    sampler: DistributedSampler[Any] = DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=True, seed=config.seed, drop_last=True
    )
    steps_per_epoch = len(sampler) // config.batch
    total = config.steps + config.fine_tune_steps
    bar = Progress(total, initial=step, quiet=not (config.progress and rank == 0))
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
                    bar.set_postfix({k: f"{v:.4f}" for k, v in terms.items()})
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
    resumed run follows the schedule of an uninterrupted one without any saved state.

    Args:
        config: the run's ``steps``, ``lr``, ``fine_tune_lr``, ``schedule`` and ``warmup_steps``.
        step: the step, from 0.

    Examples:
        >>> from torch_pconv.inpainting import TrainConfig, learning_rate
        >>> config = TrainConfig(
        ...     images="photos", steps=100, fine_tune_steps=10, schedule="cosine", warmup_steps=10
        ... )
        >>> [round(learning_rate(config, step), 6) for step in (0, 9, 50, 100)]
        [2e-05, 0.000196, 0.0001, 5e-05]
    """
    if step >= config.steps:
        return config.fine_tune_lr
    if config.schedule == "constant":
        return config.lr
    warmup = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps > 0 else 1.0
    return config.lr * warmup * 0.5 * (1 + math.cos(math.pi * step / config.steps))


def resolve_device(name: str | None, local_rank: int = 0) -> torch.device:
    """The torch device ``name`` names; None: CUDA (device ``local_rank``) if available, else
    the CPU. A plain ``cuda`` is device ``local_rank`` (this process's, under torchrun).

    Raises:
        UsageError: not a device name, or a device this machine lacks."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UsageError(f"--device {name}: not a torch device ({_first_line(error)})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {name}: this torch build ({torch.__version__}) sees no CUDA device: "
                "pass --device cpu, or leave --device out"
            )
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {name}: no CUDA device {device.index} (this machine has {torch.cuda.device_count()})"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {name}: this machine or torch build has no MPS device: pass --device cpu")
    return device


def peek_checkpoint(path: str | Path) -> dict[str, Any]:
    """The contents of a checkpoint written by :func:`save_checkpoint`, memory-mapped (cheap:
    tensors are read only when used), for its step and settings. Read with
    ``weights_only=True``: nothing in the file runs.

    Raises:
        CheckpointError: the file is not such a checkpoint, or is damaged."""
    return _read_checkpoint(path, mmap=True)


# The settings a resume may change: where and how often a run reports and saves, where it runs,
# and how it loads its data (none changes what it computes). `steps` and `fine_tune_steps` may
# grow (see _resume_differences).
_FREE_ON_RESUME = frozenset(
    {"out", "resume", "workers", "log_every", "grid_every", "checkpoint_every", "progress", "device", "cache_images"}
)
_PATHS = frozenset({"images", "masks", "vgg"})


def check_resume(path: str | Path, config: TrainConfig) -> None:
    """Refuse to resume from the checkpoint at ``path`` a run whose settings differ from the
    stored ones, but for those that only change how a run is observed, saved or loaded
    (``workers``, ``log_every``, ``grid_every``, ``checkpoint_every``, ``progress``, ``device``,
    ``cache_images``) and a longer run: more ``steps`` (while the checkpoint is still in the
    first phase) or more ``fine_tune_steps``.

    Raises:
        UsageError: naming every difference, stored value and given one.
        CheckpointError: ``path`` is not a checkpoint."""
    state = peek_checkpoint(path)
    differences = _resume_differences(state["config"], config, int(state["step"]), bool(state["fine_tune"]))
    if differences:
        raise UsageError(
            f"{path} was written with other settings: {'; '.join(differences)}. Resume with the stored "
            "settings, train into another --out, or start afresh with --no-resume (which overwrites it)"
        )


def _resume_differences(stored: dict[str, Any], config: TrainConfig, step: int, fine_tune: bool) -> list[str]:
    differences = []
    for field in dataclasses.fields(TrainConfig):
        name = field.name
        if name in _FREE_ON_RESUME:
            continue
        given = getattr(config, name)
        if name in stored:
            old = stored[name]
        elif field.default is not dataclasses.MISSING:  # a setting added since: the run had its default
            old = field.default
        else:
            old = field.default_factory() if field.default_factory is not dataclasses.MISSING else given
        if _same_setting(name, old, given):
            continue
        option = {"weights": "loss weights", "batch_norm": "batch_norm"}.get(name, f"--{name.replace('_', '-')}")
        difference = f"{option}: {old!r} stored, {given!r} given"
        if name in ("steps", "fine_tune_steps") and isinstance(old, int) and isinstance(given, int):
            if given > old and (name == "fine_tune_steps" or not (fine_tune or step > old)):
                continue  # a longer run
            if given < old:
                difference += " (a resume may lengthen a run, not shorten it)"
            else:
                difference += f" (the checkpoint, of step {step}, is past the first phase: it can no longer grow)"
        differences.append(difference)
    return differences


def _same_setting(name: str, old: Any, given: Any) -> bool:
    if isinstance(old, list):
        old = tuple(old)
    if isinstance(given, list):
        given = tuple(given)
    if name in _PATHS and old != "cache" and given != "cache" and old is not None and given is not None:
        return bool(os.path.realpath(old) == os.path.realpath(given))
    return bool(old == given)


def _check_settings(config: TrainConfig, device: torch.device) -> None:
    """Raise a UsageError for settings that cannot work (files and folders aside)."""
    at_least = {"size": 1, "batch": 1, "steps": 0, "fine_tune_steps": 0, "layers": 1, "warmup_steps": 0}
    at_least |= {"workers": 0, "log_every": 1, "grid_every": 1, "checkpoint_every": 1}
    at_least |= {"samples_per_epoch": 1, "mask_pool": 1}
    for name, low in at_least.items():
        value = getattr(config, name)
        if value is not None and value < low:
            raise UsageError(f"--{name.replace('_', '-')} {value}: must be at least {low}")
    for name in ("lr", "fine_tune_lr"):
        value = getattr(config, name)
        if not (math.isfinite(value) and value >= 0):
            raise UsageError(f"--{name.replace('_', '-')} {value}: must be a finite number, 0 or more")
    if config.hole_value not in (0, 255):
        raise UsageError(f"--hole-value {config.hole_value}: must be 0 (black holes) or 255 (white holes)")
    for name in ("widths", "kernels"):
        values = getattr(config, name)
        if values is None:
            continue
        if len(values) != config.layers:
            raise UsageError(
                f"--{name} {' '.join(map(str, values))}: {len(values)} values for --layers {config.layers}: "
                "give one per layer"
            )
        if any(v < 1 for v in values) or (name == "kernels" and any(v % 2 == 0 for v in values)):
            need = "odd numbers, 1 or more" if name == "kernels" else "1 or more"
            raise UsageError(f"--{name} {' '.join(map(str, values))}: must be {need}")
    multiple = 2**config.layers
    if config.size % multiple:
        below, above = config.size - config.size % multiple, config.size + multiple - config.size % multiple
        sizes = f"{below} or {above}" if below else str(above)
        raise UsageError(
            f"--size {config.size}: --layers {config.layers} halves the crops {config.layers} times, so the size "
            f"must be a multiple of {multiple}: try {sizes}, or fewer --layers"
        )
    if config.sync_bn and device.type != "cuda":
        raise UsageError(f"--sync-bn: SyncBatchNorm runs on CUDA only, and this run's device is {device}")
    if Path(config.out).exists() and not Path(config.out).is_dir():
        raise UsageError(f"--out {config.out}: a file, not a folder: name another --out")


def _checked_dataset(config: TrainConfig, rank: int, world: int) -> InpaintingDataset:
    """The training set, once its folders are found, its batches fit, and every image and mask
    file opens (this process checks its share of them): a damaged file stops the run now,
    named, rather than at its batch, on every resume."""
    images = _files(config.images, "--images", list_images)
    if config.masks is not None:
        _files(config.masks, "--masks", lambda root: MaskFolder(root).files)
    dataset = _build_dataset(config, images)
    per_process = len(dataset) // world
    if per_process < config.batch:
        samples = (
            f"{len(dataset)} samples (--samples-per-epoch)"
            if config.samples_per_epoch is not None
            else f"{len(dataset)} samples (one per image)"
        )
        processes = f" shared by {world} processes, {per_process} each" if world > 1 else ""
        raise UsageError(
            f"--batch {config.batch}: more than an epoch's {samples}{processes}: "
            "lower --batch or raise --samples-per-epoch"
        )
    files: list[Path] = list(images)
    if isinstance(dataset.masks, MaskFolder):
        files += dataset.masks.files
    verify_images(files[rank::world])
    return dataset


def _files(root: str, option: str, find: Any) -> list[Path]:
    """The image files ``find`` lists under the folder ``root``, or a UsageError naming ``option``."""
    if not Path(root).exists():
        raise UsageError(f"{option} {root}: no such folder")
    if not Path(root).is_dir():
        raise UsageError(f"{option} {root}: a file, not a folder of images")
    try:
        files: list[Path] = find(root)
    except FileNotFoundError as error:
        raise UsageError(f"{option} {root}: {_first_line(error)}") from None
    return files


def _first_line(error: BaseException) -> str:
    """An exception's message, on one line (the last non-empty line of a multi-line one)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


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


def _build_dataset(config: TrainConfig, images: list[Path]) -> InpaintingDataset:
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
    device = resolve_device(config.device, local)
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
        for line in path.read_text(errors="replace").splitlines():
            entry = _log_entry(line)
            # A line that does not parse was torn: a run killed (or a disk filled) mid-write.
            if entry is not None and entry["step"] <= step:
                kept.append(line + "\n")
    file = path.open("w")
    file.writelines(kept)
    return file


def _log_entry(line: str) -> dict[str, Any] | None:
    """A line of the log as its dict, or None for a line that is not one (torn)."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) and isinstance(entry.get("step"), int) else None


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
