"""Progress bars for long jobs that also work without a terminal (batch logs, cluster job output, CI).

One helper, :class:`Progress`, used by the batch runner (rows done / failed / remaining), by the digital
patient simulation (through the ``log`` callback :func:`~PETDosePaintingLib.phantom.patient.build_patient`
already has), by SimpleITK filters and registrations (:func:`observe_sitk`) and by the benchmarks.

Display modes (``mode``):

* ``"tqdm"``: a `tqdm <https://tqdm.github.io>`_ bar (if tqdm is installed; it is optional);
* ``"plain"``: one self-contained line per update, e.g. ``[batch] 3/10 rows (30%) done 2, failed 1,
  remaining 7 | P003 ok``, written at most every ``min_interval_s`` seconds (and always for the first
  and the last update), so a log file or a SLURM output file stays readable;
* ``"off"``: nothing;
* ``"auto"`` (default): the ``PETDP_PROGRESS`` environment variable if set (``tqdm``, ``plain`` or
  ``off``), else tqdm when it is installed and the stream is a terminal, else plain lines.

The progress bar never writes to stdout unless asked (default stream: stderr), so the results a command
prints stay separate from its progress.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

#: Display modes accepted by :class:`Progress`.
MODES = ("auto", "tqdm", "plain", "off")
#: Environment variable that overrides ``mode="auto"``.
ENV_VAR = "PETDP_PROGRESS"


def tqdm_available() -> bool:
    """Whether the optional ``tqdm`` package can be imported."""
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_mode(mode: str = "auto", stream: TextIO | None = None) -> str:
    """The display actually used for ``mode`` on ``stream``: ``"tqdm"``, ``"plain"`` or ``"off"``.

    ``"tqdm"`` falls back to ``"plain"`` when tqdm is not installed.
    """
    if mode not in MODES:
        raise ValueError(f"progress mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "auto":
        env = os.environ.get(ENV_VAR, "").strip().lower()
        if env in ("tqdm", "plain", "off"):
            mode = env
        else:
            stream = stream if stream is not None else sys.stderr
            is_tty = bool(getattr(stream, "isatty", lambda: False)())
            mode = "tqdm" if is_tty and tqdm_available() else "plain"
    if mode == "tqdm" and not tqdm_available():
        mode = "plain"
    return mode


class Progress:
    """A progress bar over ``total`` steps (or an open-ended counter when ``total`` is ``None``).

    Use as a context manager (or call :meth:`close`)::

        with Progress(total=len(rows), desc="batch", unit="rows") as bar:
            for row in rows:
                ...
                bar.update(label=row.id, done=n_ok, failed=n_failed, remaining=left)

    ``update(n, label=..., **counts)`` advances by ``n`` steps; ``label`` (the current item) and the named
    counts are shown after the bar. :meth:`write` prints a message line without breaking the bar.
    ``initial`` starts the count above zero (e.g. rows reused from a previous run).
    """

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "steps", *, initial: int = 0,
                 stream: TextIO | None = None, mode: str = "auto", min_interval_s: float = 2.0,
                 leave: bool = True) -> None:
        self.total = None if total is None else int(total)
        self.desc = desc
        self.unit = unit
        self.n = int(initial)
        self.stream = stream if stream is not None else sys.stderr
        self.mode = resolve_mode(mode, self.stream)
        self.min_interval_s = float(min_interval_s)
        self.label = ""
        self.counts: dict[str, Any] = {}
        self.started = time.monotonic()
        self._last_line = -float("inf")
        self._dirty = False  #: plain mode: the current state has not been printed
        self._closed = False
        self._bar = None
        if self.mode == "tqdm":
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=f" {unit}", initial=self.n, file=self.stream,
                             leave=leave, dynamic_ncols=True)

    # -- updates ---------------------------------------------------------------------------------------

    def update(self, n: int = 1, *, label: str | None = None, **counts: Any) -> None:
        """Advance by ``n`` steps (0 to only change the label or counts)."""
        self.n += int(n)
        if label is not None:
            self.label = str(label)
        self.counts.update(counts)
        if self._bar is not None:
            self._bar.set_postfix_str(self._postfix(), refresh=False)
            self._bar.update(int(n))
        elif self.mode == "plain":
            finished = self.total is not None and self.n >= self.total
            now = time.monotonic()
            if n and (finished or now - self._last_line >= self.min_interval_s):
                self._print(self.line())
                self._last_line = now
                self._dirty = False
            else:
                self._dirty = True

    def set(self, n: int, *, label: str | None = None, **counts: Any) -> None:
        """Move to step ``n`` (an absolute position, e.g. an optimiser iteration)."""
        self.update(int(n) - self.n, label=label, **counts)

    def write(self, message: str) -> None:
        """Print ``message`` on its own line (above a tqdm bar); nothing in ``off`` mode."""
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        elif self.mode == "plain":
            self._print(message)

    def close(self) -> None:
        """Finish the bar (a plain final line is written if the last state was not shown)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.set_postfix_str(self._postfix(), refresh=False)
            self._bar.close()
        elif self.mode == "plain" and self._dirty:
            self._print(self.line())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- text ------------------------------------------------------------------------------------------

    def line(self) -> str:
        """The plain-text state, e.g. ``[batch] 3/10 rows (30%) done 2, failed 1 | P003 ok, 12 s``."""
        head = f"[{self.desc}] " if self.desc else ""
        if self.total:
            count = f"{self.n}/{self.total} {self.unit} ({100.0 * self.n / self.total:.0f}%)"
        else:
            count = f"{self.n} {self.unit}"
        elapsed = time.monotonic() - self.started
        postfix = self._postfix()
        return f"{head}{count}{' ' + postfix if postfix else ''}, {elapsed:.0f} s"

    def _postfix(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        return " | ".join(part for part in (counts, self.label) if part)

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    # -- adapters --------------------------------------------------------------------------------------

    def log_callback(self, prefix: str = "") -> Callable[[str], None]:
        """A ``log(message)`` callback that advances one step per message and shows it as the label.

        For functions that report their stages through a log callback, e.g.
        :func:`~PETDosePaintingLib.phantom.patient.build_patient` (see :func:`patient_build_steps`).
        """
        def log(message: str) -> None:
            self.update(1, label=f"{prefix}{message}")

        return log

    def callback(self) -> Callable[[int, int, str], bool]:
        """A ``progress(done, total, label) -> bool`` callback (the signature of the MRML logic's
        ``ProgressCallback``): moves to ``done`` of ``total`` and never asks to cancel."""
        def report(done: int, total: int, label: str = "") -> bool:
            if total and self.total != total:
                self.total = int(total)
                if self._bar is not None:
                    self._bar.total = self.total
            self.set(done, label=label)
            return True

        return report


def patient_build_steps(config: Any) -> int:
    """How many log messages :func:`~PETDosePaintingLib.phantom.patient.build_patient` emits for ``config``
    (anatomy, lesions, one per timepoint, and the MRI): the ``total`` of its progress bar."""
    from ..phantom.tumour import DEFAULT_TIMEPOINTS

    timepoints = 1 + (len(DEFAULT_TIMEPOINTS) if getattr(config, "with_timepoints", True) else 0)
    return 2 + timepoints + (1 if getattr(config, "with_mr", True) else 0)


def build_patient_with_progress(config: Any, *, desc: str = "phantom", stream: TextIO | None = None,
                                mode: str = "auto", log: Callable[[str], None] | None = None):
    """:func:`~PETDosePaintingLib.phantom.patient.build_patient` with a progress bar over its stages;
    ``log`` also receives every stage message (e.g. a row's log file)."""
    from ..phantom.patient import build_patient

    with Progress(total=patient_build_steps(config), desc=desc, unit="stages", stream=stream, mode=mode,
                  min_interval_s=0.0) as bar:
        advance = bar.log_callback()

        def both(message: str) -> None:
            advance(message)
            if log is not None:
                log(message)

        return build_patient(config, log=both)


def observe_sitk(process: Any, progress: Progress, *, total_iterations: int | None = None) -> None:
    """Drive ``progress`` from a SimpleITK filter or an ``ImageRegistrationMethod`` while it runs.

    A registration method reports each optimiser iteration (``sitkIterationEvent``; the label shows the
    resolution level and the metric value), counted across the levels of a multi-resolution registration
    (``sitkMultiResolutionIterationEvent``); give ``total_iterations`` (the optimiser's maximum number of
    iterations times the number of levels) for a bounded bar. Any other process object reports its progress
    fraction (``sitkProgressEvent``) as percent of a 100-step bar.
    """
    import SimpleITK as sitk

    def set_total(total: int) -> None:
        progress.total = int(total)
        if progress._bar is not None:
            progress._bar.total = progress.total

    if hasattr(process, "GetOptimizerIteration"):
        if total_iterations is not None:
            set_total(total_iterations)
        state = {"offset": 0, "last": 0, "level": 0}

        def on_level() -> None:
            state["offset"] += state["last"]
            state["last"] = 0
            state["level"] = int(process.GetCurrentLevel())

        def on_iteration() -> None:
            state["last"] = int(process.GetOptimizerIteration()) + 1
            progress.set(state["offset"] + state["last"],
                         label=f"level {state['level']}, metric {process.GetMetricValue():.5g}")

        process.AddCommand(sitk.sitkMultiResolutionIterationEvent, on_level)
        process.AddCommand(sitk.sitkIterationEvent, on_iteration)
    else:
        set_total(100)

        def on_progress() -> None:
            progress.set(round(100 * float(process.GetProgress())))

        process.AddCommand(sitk.sitkProgressEvent, on_progress)


def format_counts(counts: Mapping[str, int]) -> str:
    """``done 2, failed 1, remaining 7``: the counts as text (plain lines and summaries)."""
    return ", ".join(f"{k} {v}" for k, v in counts.items())


__all__ = ["ENV_VAR", "MODES", "Progress", "build_patient_with_progress", "format_counts", "observe_sitk",
           "patient_build_steps", "resolve_mode", "tqdm_available"]
