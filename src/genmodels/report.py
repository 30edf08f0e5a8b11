"""Pictures and a self-contained HTML page for a run: loss curve, sample grids, settings."""

import base64
import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .train.checkpoint import atomic_write  # noqa: E402


def read_metrics(run_dir) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


BOOKKEEPING = ("step", "images", "lr", "img_per_s", "elapsed_s", "eval", "eval_s", "n")


def logged_series(rows: list[dict]) -> list[str]:
    """The scalar names the training rows log: "loss" first, then the phases' own (per-phase
    losses, gradient norms, recon/KL, D(real)...), in the order they first appear."""
    names = ["loss"]
    for row in rows:
        names += [k for k, v in row.items() if k not in names and k not in BOOKKEEPING
                  and isinstance(v, (int, float)) and not isinstance(v, bool)]
    return names


def plot_loss(run_dir, png_path) -> Path | None:
    """Training loss against images seen, one panel per logged scalar (log scale where every
    value is positive); None when nothing was logged."""
    rows = [r for r in read_metrics(run_dir) if "loss" in r and "images" in r]
    if not rows:
        return None
    names = logged_series(rows)
    cols = min(3, len(names))
    nrows = -(-len(names) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6 if cols == 1 else 4 * cols, 3.5 * nrows), dpi=110,
                             squeeze=False)
    for ax, name in zip(axes.flat, names):
        points = [(r["images"], r[name]) for r in rows if name in r]
        ax.plot(*zip(*points), lw=1.2)
        ax.set_xlabel("training images seen")
        ax.set_ylabel("loss (per-sample objective)" if name == "loss" else name)
        if all(v > 0 for _, v in points):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.tight_layout()
    atomic_write(png_path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return Path(png_path)


def _img_tag(path: Path, caption: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _flatten(d: dict, prefix="") -> list[tuple[str, object]]:
    rows = []
    for k, v in d.items():
        if isinstance(v, dict):
            rows += _flatten(v, f"{prefix}{k}.")
        else:
            rows.append((f"{prefix}{k}", v))
    return rows


def write_report(run_dir, *, title: str, figures: list[tuple[str, Path]], facts: dict) -> Path:
    """report.html in ``run_dir``: the figures (embedded, so the file stands alone), the facts
    (a key -> value table) and the run's resolved config."""
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())["config"]
    fact_rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                        for k, v in facts.items())
    cfg_rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(json.dumps(v))}</td></tr>"
                       for k, v in _flatten(config))
    figs = "".join(_img_tag(p, caption) for caption, p in figures if p is not None)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }}
figure {{ display: inline-block; margin: 0 1.5em 1.5em 0; vertical-align: top; }}
img {{ image-rendering: pixelated; border: 1px solid #ddd; max-width: 100%; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ text-align: left; padding: 2px 12px 2px 0; font-size: 14px; }}
th {{ font-weight: 600; color: #555; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<h2>Results</h2><table>{fact_rows}</table>
{figs}
<h2>Settings</h2><table>{cfg_rows}</table>
</body></html>
"""
    out = run_dir / "report.html"
    atomic_write(out, lambda tmp: Path(tmp).write_text(page))
    return out
