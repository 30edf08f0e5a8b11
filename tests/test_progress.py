"""Progress: the binding budget's fraction, plain log lines off a terminal, a bar on one."""

import io
import json
import re

import pytest
from tqdm.std import tqdm

from genmodels.config import load_config
from genmodels.progress import Budget, LineLog, TrainingProgress, clock_time, progress_bar
from genmodels.train.run import train

LINE = re.compile(r"^training \((time|image) budget\): (\d+) %, ([\d,]+) images")


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class Terminal(io.StringIO):
    def isatty(self):
        return True


def parse(text):
    """(budget, percent, images) of each of the trainer's log lines."""
    return [(m[1], int(m[2]), int(m[3].replace(",", ""))) for m in map(LINE.match, text.splitlines()) if m]


def test_the_time_budget_binds_when_time_runs_out_first():
    clock = FakeClock()
    budget = Budget(2_000_000, minutes=10, clock=clock)
    clock.t += 300  # 5 of 10 minutes, 400 img/s: 120,000 of 2M images
    assert budget.fraction(120_000) == (0.5, "time")
    assert budget.seconds_left(120_000, 400.0) == 300  # not 2M images at 400 img/s
    assert not budget.time_up()
    clock.t += 300
    assert budget.time_up() and budget.fraction(240_000) == (1.0, "time")


def test_the_image_budget_binds_when_images_run_out_first():
    clock = FakeClock()
    budget = Budget(100_000, minutes=60, clock=clock)
    clock.t += 600  # 10 of 60 minutes, 50 % of the images
    fraction, binding = budget.fraction(50_000)
    assert (fraction, binding) == (0.5, "image")
    assert budget.seconds_left(50_000, 50_000 / 600) == pytest.approx(600)
    assert Budget(100, clock=clock).fraction(25) == (0.25, "image")  # no time budget


def test_on_resume_images_count_from_the_restored_count_and_minutes_from_this_process():
    clock = FakeClock()
    budget = Budget(100_000, minutes=10, clock=clock)
    out = io.StringIO()
    bar = TrainingProgress(budget, images_seen=80_000, file=out)
    clock.t += 60
    bar.update(6_000)  # 100 img/s in this process: 86 % of the images, 10 % of the time
    assert budget.fraction(bar.images_seen) == (0.86, "image")
    assert parse(out.getvalue()) == [("image", 86, 86_000)]
    assert out.getvalue().rstrip().endswith("2:20 left")  # 14,000 images at 100 img/s


def test_training_lines_follow_the_binding_budget_as_it_changes():
    clock = FakeClock()
    out = io.StringIO()
    bar = TrainingProgress(Budget(30_000, minutes=5, clock=clock), file=out)
    for second in range(300):  # 60 img/s for 100 s (time binds), then 240 img/s (images bind)
        clock.t += 1
        bar.update(60 if second < 100 else 240)
        if bar.images_seen >= 30_000:
            break
    bar.set_postfix(loss="0.0312")
    bar.close()
    lines = parse(out.getvalue())
    assert [b for b, *_ in lines[:6]] == ["time"] * 6 and lines[-1][:2] == ("image", 100)
    percents = [p for _, p, _ in lines]
    assert percents == sorted(percents) and len(lines) == 100 // 5 + 1
    assert out.getvalue().rstrip().endswith("loss 0.0312, 3:20 elapsed")


def test_off_a_terminal_lines_every_5_percent_and_no_carriage_returns():
    clock = FakeClock()
    out = io.StringIO()
    bar = progress_bar(total=1000, desc="sampling", file=out, clock=clock)
    assert isinstance(bar, LineLog)
    for _ in range(1000):
        clock.t += 0.012
        bar.update()
    bar.close()
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 100 // 5 + 1
    assert lines[0] == "sampling: 0 %, 0:12 left" and lines[1] == "sampling: 5 %, 0:11 left"
    assert lines[-1] == "sampling: 100 %, 0:12 elapsed"


def test_a_fast_inner_loop_writes_nothing_off_a_terminal_and_a_slow_one_a_few_lines():
    clock = FakeClock()
    out = io.StringIO()
    for _ in progress_bar(range(50), desc="sampling", leave=False, file=out, clock=clock):
        clock.t += 0.1  # 5 s in all
    assert out.getvalue() == ""
    for _ in progress_bar(range(50), desc="sampling", leave=False, file=out, clock=clock):
        clock.t += 1.0  # 50 s: a line at most every 10 s, then the end
    lines = out.getvalue().splitlines()
    assert 4 <= len(lines) <= 6 and lines[-1] == "sampling: 100 %, 0:50 elapsed"


def test_a_terminal_gets_a_tqdm_bar():
    out = Terminal()
    bar = progress_bar(range(3), desc="sampling", file=out)
    assert isinstance(bar, tqdm)
    list(bar)
    assert "\r" in out.getvalue() and "100%|" in out.getvalue()
    out, clock = Terminal(), FakeClock()
    bar = TrainingProgress(Budget(1_000_000, minutes=10, clock=clock), file=out)
    clock.t += 60
    bar.update(16)
    bar.close()
    assert isinstance(bar.bar, tqdm) and "training (time budget):" in out.getvalue()


@pytest.mark.parametrize("file", [io.StringIO(), Terminal()])
def test_disabled_progress_prints_nothing(file):
    list(progress_bar(range(10), disable=True, file=file))
    bar = TrainingProgress(Budget(100, minutes=1), file=file, disable=True)
    bar.update(50)
    bar.set_postfix(loss="0.1")
    bar.close()
    assert file.getvalue() == ""


def test_clock_time():
    assert (clock_time(0), clock_time(390), clock_time(5220)) == ("0:00", "6:30", "1:27:00")


def test_a_time_bound_training_run_logs_the_time_budget(tmp_path, tiny_mnist_overrides, capsys, monkeypatch):
    monkeypatch.setenv("GENMODELS_FUSED_KERNELS", "0")  # compiling them would spend the budget
    cfg = load_config("mnist-ddpm", tiny_mnist_overrides + ["train.images=1000000", "train.minutes=0.1"])
    train(cfg, tmp_path / "run")  # 6 s
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = parse(err)
    assert len(lines) >= 4 and {b for b, *_ in lines} == {"time"}, err
    percents = [p for _, p, _ in lines]
    assert percents == sorted(percents) and percents[-1] == 100, err
    # each line's percentage is the time spent, which metrics.jsonl logs right after it
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    elapsed = {row["images"]: row["elapsed_s"] for row in rows}
    for _, percent, images in lines[:-1]:
        # (1e-9: 100 * 5.1 / 6 is 84.99999999999999 in floating point, and 85 % was right)
        assert -1e-9 <= 100 * elapsed[images] / 6 - percent < 5, (percent, elapsed[images])
    assert lines[-1][2] < 10_000  # the image budget would read 0 %
    assert "img/s" in err and "loss " in err
