"""Progress of a long loop (the benchmark's calls, training's steps): a tqdm bar where tqdm is installed,
plain lines where it is not. tqdm stays optional: it comes with the bench extra."""

from __future__ import annotations

from typing import Any, TextIO


class Progress:
    """A bar of ``total`` steps, from ``initial``; or, without one, a plain line per ``write`` and per
    ``set_postfix``::

        progress = Progress(total, unit="step")
        for ...:
            progress.update()                       # one step done
            progress.set_postfix({"loss": "0.1"})   # on the bar; without it, "step 7: loss 0.1"
            progress.write("a line of its own")     # above the bar, or alone
        progress.close()

    Args:
        total: the number of steps.
        unit: what a step is called, on the bar and at the start of a postfix line.
        initial: the steps already done (a resumed run).
        bar: False for plain lines even where tqdm is installed (off a terminal, say).
        quiet: nothing at all, neither bar nor lines.
        leave: keep the finished bar on the screen.
        stream: where the bar and the lines go; None: the bar to stderr (tqdm's), lines to stdout.
    """

    def __init__(
        self,
        total: int,
        *,
        unit: str = "step",
        initial: int = 0,
        bar: bool = True,
        quiet: bool = False,
        leave: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.unit, self.count, self.stream, self.quiet = unit, initial, stream, quiet
        self.bar: Any = None
        if bar and not quiet:
            try:
                from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]
            except ImportError:
                return
            self.bar = tqdm(total=total, initial=initial, unit=unit, leave=leave, file=stream, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        self.count += n
        if self.bar is not None:
            self.bar.update(n)

    def set_postfix(self, values: dict[str, str]) -> None:
        """The latest figures: on the bar (shown at its next refresh), or a line of their own."""
        if self.bar is not None:
            self.bar.set_postfix(values, refresh=False)
        else:
            self.write(f"{self.unit} {self.count}: " + ", ".join(f"{k} {v}" for k, v in values.items()))

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        elif not self.quiet:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
