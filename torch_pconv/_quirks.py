"""Every torch feature that differs across the supported versions, in one place.

torch_pconv runs on torch 2.1 and every later release. Features that some of those releases lack,
and the few private torch names the package touches, are reached through this module alone. Each
is detected (never inferred from a version number) and has a fallback that is always correct, if
sometimes slower or leaner in what it reports. Checked on torch 2.1.2, 2.13.0 and 2.15.0.

- ``is_compiling``: ``torch.compiler.is_compiling`` appeared in 2.3; before, the same function
  was ``torch._dynamo.is_compiling``. Fallback: False (nothing in 2.1 compiles without dynamo).
- ``autocast_enabled(device_type)``: ``torch.is_autocast_enabled`` takes a device type since 2.4;
  before, there was one function per device (``torch.is_autocast_cpu_enabled`` ...; the bare
  ``is_autocast_enabled()`` meant CUDA). Fallback: that per-device function, or False.
- ``autocast_dtype(device_type)``: ``torch.get_autocast_dtype`` (2.4); before, one function per
  device (``get_autocast_cpu_dtype``, ``get_autocast_gpu_dtype``). Unknown: None, and the layer
  runs its plain ops under autocast (correct; they keep the masked input for backward).
- ``autocast_off(device_type)``: a context that disables autocast, for the exact mask counts.
  ``torch.amp.is_autocast_available`` (2.4) says which devices have autocast (meta, for one,
  refuses even to disable it); before, constructing ``torch.autocast`` is the probe. Either
  answer is memoised per device type, so that compiled code sees a dict lookup, not the probe
  (dynamo on torch 2.5 breaks the graph at ``is_autocast_available``).
- ``dispatch_mode_active``: ``torch._C._len_torch_dispatch_stack`` tells whether a dispatch mode
  (FakeTensorMode, a tracer's mode) is on, under which the mask=None cache must neither be
  filled nor trusted. Missing: True, so the layer never caches (correct, one small convolution
  more per call).
- ``functorch_transform_active``: whether a ``torch.func`` transform (grad, jvp, vmap, jacfwd,
  ...) is running, from ``torch._C._functorch.peek_interpreter_stack`` (2.1 to 2.15). Under one,
  the layer runs plain ops, because torch.func differentiates an ``autograd.Function``'s ``jvp``
  rule at one level only: ``jacfwd`` over a ``jvp`` of the Function gives 0 (torch 2.13, checked
  with a two-line multiply). Missing: True, and the layer always runs plain ops (correct; they
  keep the masked input for backward).
- ``profile_events``: the CPU benchmark's memory meter reads the profiler's raw event tree
  (``torch._C._profiler._ExtraFields_Allocation``), the only place that sees every allocation
  and free in order. Missing: None, and the benchmark reports CPU memory as unavailable. The
  benchmark is its only user; it is here because it reads private names, which live here alone.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch


def _find_is_compiling() -> Callable[[], bool]:
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return compiler.is_compiling  # type: ignore[no-any-return]
    import torch._dynamo as dynamo  # 2.1 and 2.2: loaded here, once

    found: Callable[[], bool] = getattr(dynamo, "is_compiling", lambda: False)
    return found


# Chosen once, at import: compilers must see a plain call of the function they know.
is_compiling: Callable[[], bool] = _find_is_compiling()


def compiling_or_tracing() -> bool:
    """Whether torch.compile, torch.export or torch.jit.trace is recording the computation."""
    return is_compiling() or bool(torch.jit.is_tracing())  # type: ignore[attr-defined, no-untyped-call]


def _autocast_takes_device_type() -> bool:
    try:
        torch.is_autocast_enabled("cpu")
    except TypeError:
        return False
    return True


_AUTOCAST_TAKES_DEVICE_TYPE = _autocast_takes_device_type()


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast runs ``device_type``'s convolutions in; None if this torch cannot tell."""
    get = getattr(torch, "get_autocast_dtype", None)
    if get is not None:
        return get(device_type)  # type: ignore[no-any-return]
    legacy = {"cpu": "get_autocast_cpu_dtype", "cuda": "get_autocast_gpu_dtype"}.get(device_type)
    return getattr(torch, legacy)() if legacy and hasattr(torch, legacy) else None


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` ('cpu', 'cuda', ...)."""
    if not _autocast_available(device_type):  # meta, for one: asking raises
        return False
    if _AUTOCAST_TAKES_DEVICE_TYPE:
        return bool(torch.is_autocast_enabled(device_type))
    if device_type == "cuda":
        return bool(torch.is_autocast_enabled())
    probe = getattr(torch, f"is_autocast_{device_type}_enabled", None)
    return bool(probe()) if probe is not None else False


def _has_autocast(device_type: str) -> bool:
    available = getattr(getattr(torch, "amp", None), "is_autocast_available", None)
    try:
        if available is not None:
            return bool(available(device_type))
        with warnings.catch_warnings():  # 'CUDA is not available': autocast then disables itself
            warnings.simplefilter("ignore")
            with torch.autocast(device_type, enabled=False):
                pass
    except (RuntimeError, ValueError):  # not a device type, or one without autocast
        return False
    return True


_HAS_AUTOCAST = {device_type: _has_autocast(device_type) for device_type in ("cpu", "cuda")}


def _autocast_available(device_type: str) -> bool:
    has = _HAS_AUTOCAST.get(device_type)
    if has is None:
        has = _HAS_AUTOCAST[device_type] = _has_autocast(device_type)
    return has


def autocast_off(device_type: str) -> AbstractContextManager[Any]:
    """A context with autocast disabled on ``device_type``; a no-op where it has no autocast."""
    return torch.autocast(device_type, enabled=False) if _autocast_available(device_type) else nullcontext()


def dispatch_mode_active() -> bool:
    """Whether a torch dispatch mode (FakeTensorMode and the like) is on; True if unknown."""
    depth = getattr(torch._C, "_len_torch_dispatch_stack", None)
    return depth is None or depth() > 0


def functorch_transform_active() -> bool:
    """Whether a ``torch.func`` transform is running; True if this torch cannot tell."""
    peek = getattr(getattr(torch._C, "_functorch", None), "peek_interpreter_stack", None)
    return peek is None or peek() is not None


def dual_level_open() -> bool:
    """Whether a ``torch.autograd.forward_ad.dual_level`` is open: outside one no tensor carries a
    forward-mode tangent (leaving the level drops them), so none need be asked for one (about 1 µs
    a tensor); True if this torch cannot tell."""
    level = getattr(torch.autograd.forward_ad, "_current_level", None)
    return not isinstance(level, int) or level >= 0


def profile_events(prof: Any) -> tuple[list[tuple[int, int]], list[tuple[str, int, int]]] | None:
    """The allocations and the other events of a CPU profile, from its raw event tree.

    Returns ``(allocations, events)``: ``(time_ns, bytes)`` for every allocation (positive) and
    free (negative), in order; ``(name, start_ns, end_ns)`` for every other event (operators,
    ``record_function`` ranges). None where this torch does not expose the raw events.
    """
    try:
        from torch._C._profiler import _ExtraFields_Allocation

        stack = list(reversed(prof.profiler.kineto_results.experimental_event_tree()))
    except (ImportError, AttributeError):
        return None
    allocations: list[tuple[int, int]] = []
    events: list[tuple[str, int, int]] = []
    while stack:  # depth first, in order: a stable sort on time then keeps ties in order
        node = stack.pop()
        stack.extend(reversed(node.children))
        if isinstance(node.extra_fields, _ExtraFields_Allocation):
            allocations.append((node.start_time_ns, int(node.extra_fields.alloc_size)))
        else:
            events.append((node.name, node.start_time_ns, node.end_time_ns))
    allocations.sort(key=lambda event: event[0])
    return allocations, events
