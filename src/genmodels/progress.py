"""Progress of long loops that reads well in a terminal and in a log.

``progress_bar`` is a tqdm bar when stderr is a terminal (or in a notebook). Elsewhere (a CI
log, ``nohup``, a web app's subprocess) tqdm's carriage-return frames pile up by the thousand,
so it is a ``LineLog`` instead: a plain line every 5 % and one at the end, e.g.

    training (time budget): 35 %, 41,600 images, 182 img/s, loss 0.0312, 6:30 left

``TrainingProgress`` is the trainer's: a run stops at whichever of its image and time budgets
(``Budget``) is spent first, so it shows how much of that one is spent.
"""

import math
import sys
import time

from tqdm.auto import tqdm

# tqdm.auto is the notebook widget in Jupyter, whose stderr is no terminal but shows a bar well.
_NOTEBOOK = any(c.__module__ == "tqdm.notebook" for c in tqdm.__mro__)


def progress_bar(iterable=None, *, total=None, desc=None, initial=0, disable=False, leave=True,
                 eta=True, every=5, file=None, clock=time.monotonic, **options):
    """A tqdm bar on a terminal, else a ``LineLog``; ``options`` go to tqdm alone.

    ``eta=False``: show only the percentage, the elapsed time and the postfix, which then says
    what is left (for a caller that knows better than n's rate; n/total and the rate are hidden,
    so n may count a fraction of ``total=1``).
    """
    stream = sys.stderr if file is None else file
    if disable or _NOTEBOOK or _isatty(stream):
        if not eta:
            options.setdefault("bar_format", "{l_bar}{bar}| {elapsed}{postfix}")
        if file is not None:
            options["file"] = file
        return tqdm(iterable, total=total, desc=desc, initial=initial, disable=disable, leave=leave, **options)
    return LineLog(iterable, total=total, desc=desc, initial=initial, leave=leave, eta=eta, every=every,
                   file=stream, clock=clock)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


class LineLog:
    """tqdm's interface (iteration, update, set_postfix, set_description, close, n) as plain
    lines: one at the first update, one whenever another ``every`` % is done, one at close.

    A transient bar (``leave=False``: an inner loop, which tqdm erases when done) writes a line
    only ``quiet_s`` after its start or its last line, and an end line only after one of those,
    so a loop faster than ``quiet_s`` writes nothing.
    """

    disable = False

    def __init__(self, iterable=None, *, total=None, desc=None, initial=0, leave=True, eta=True,
                 every=5, quiet_s=10.0, file=None, clock=time.monotonic):
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.n, self.initial = iterable, total, desc, initial, initial
        self.leave, self.eta, self.every, self.quiet_s = leave, eta, every, quiet_s
        self.file, self.clock = (sys.stderr if file is None else file), clock
        self.postfix = ""
        self.start = self._last_t = clock()
        self._lines = 0
        self._step = self._step_of(initial)  # the last `every` % step a line was written in
        self.closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update()
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n=1) -> None:
        self.n += n
        step = self._step_of(self.n)
        if self.leave and not self._lines:
            self._write()
        elif step > self._step and self._percent() < 100 and (
                self.leave or self.clock() - self._last_t >= self.quiet_s):
            self._write()

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in {**(ordered_dict or {}), **kwargs}.items())

    def set_postfix_str(self, s="", refresh=True) -> None:
        self.postfix = str(s)

    def set_description(self, desc=None, refresh=True) -> None:
        self.desc = desc

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.leave or self._lines:
                self._write(end=True)

    def _percent(self) -> int | None:
        # floored, with room for float round-off: "100 %" only once done
        return math.floor(100 * self.n / self.total + 1e-6) if self.total else None

    def _step_of(self, n) -> int:
        return math.floor(100 * n / self.total / self.every + 1e-6) if self.total else 0

    def _write(self, *, end=False) -> None:
        now = self.clock()
        elapsed = now - self.start
        pct = self._percent()
        parts = [f"{pct} %" if pct is not None else f"{self.n:,}"]
        if self.postfix:
            parts.append(self.postfix)
        if end:
            parts.append(f"{clock_time(elapsed)} elapsed")
        elif self.eta and self.total and self.n > self.initial and elapsed > 0:
            rate = (self.n - self.initial) / elapsed
            parts.append(f"{clock_time((self.total - self.n) / rate)} left")
        print(f"{self.desc}: " * bool(self.desc) + ", ".join(parts), file=self.file, flush=True)
        self._lines += 1
        self._last_t, self._step = now, self._step_of(self.n)


def clock_time(seconds: float) -> str:
    """390 -> '6:30', 5220 -> '1:27:00'."""
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Budget:
    """A run's budgets: ``images`` in all (with those of the runs it resumes) and ``minutes`` of
    this process's wall-clock time, counted from now. The run stops when either is spent."""

    def __init__(self, images: int, minutes: float | None = None, *, clock=time.monotonic):
        self.images, self.clock = images, clock
        self.seconds = 60 * minutes if minutes else None
        self.start = clock()
        self.deadline = self.start + self.seconds if self.seconds else math.inf

    def time_up(self) -> bool:
        return self.clock() >= self.deadline

    def fraction(self, images_seen: int) -> tuple[float, str]:
        """(the larger of the spent fractions images_seen / images and elapsed / minutes, at most
        1; "image" or "time": which one it is). On a fresh run the larger one is the budget that
        runs out first at the mean rate so far."""
        by_images = images_seen / self.images
        by_time = (self.clock() - self.start) / self.seconds if self.seconds else 0.0
        return (min(by_time, 1.0), "time") if by_time > by_images else (min(by_images, 1.0), "image")

    def seconds_left(self, images_seen: int, img_per_s: float | None) -> float | None:
        """Until the first budget is spent, the images at ``img_per_s`` (None: not known yet).

        Not the fraction's extrapolation: on resume the image fraction starts from the restored
        count, while the time budget and the rate are this process's."""
        by_time = max(self.deadline - self.clock(), 0.0)
        if not img_per_s:
            return by_time if self.seconds else None
        return min(by_time, max(self.images - images_seen, 0) / img_per_s)


class TrainingProgress:
    """The trainer's bar (or log lines): the spent fraction of the binding budget, images seen,
    img/s in this process, the last logged loss and the time left. The trainer calls
    ``update(images)``, ``set_postfix(loss=...)`` and ``close()``, as on a tqdm bar."""

    def __init__(self, budget: Budget, images_seen: int = 0, *, disable=False, file=None):
        self.budget, self.images_seen, self.start_images = budget, images_seen, images_seen
        self.loss = None
        self.bar = progress_bar(total=1.0, initial=budget.fraction(images_seen)[0], desc="training", eta=False,
                                disable=disable, file=file, clock=budget.clock, dynamic_ncols=True,
                                mininterval=1.0)

    def update(self, images: int) -> None:
        self.images_seen += images
        self._show()

    def set_postfix(self, *, loss) -> None:
        self.loss = loss  # shown from the next update on

    def close(self) -> None:
        self._show(end=True)
        self.bar.close()

    def _show(self, *, end=False) -> None:
        if self.bar.disable:
            return
        fraction, binding = self.budget.fraction(self.images_seen)
        elapsed = self.budget.clock() - self.budget.start
        img_s = (self.images_seen - self.start_images) / elapsed if elapsed > 0 else None
        parts = [f"{self.images_seen:,} images"]
        if img_s:
            parts.append(f"{img_s:.0f} img/s")
        if self.loss is not None:
            parts.append(f"loss {self.loss}")
        if not end:
            left = self.budget.seconds_left(self.images_seen, img_s)
            parts.append(f"{'?' if left is None else clock_time(left)} left")
        if self.budget.seconds:  # two budgets: name the one shown
            self.bar.set_description(f"training ({binding} budget)", refresh=False)
        self.bar.set_postfix_str(", ".join(parts), refresh=False)
        self.bar.update(fraction - self.bar.n)
