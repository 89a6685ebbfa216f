"""The gallery: every 2-D model family trained on the same data, side by side.

``pushforward gallery`` (or ``pushforward demo --gallery``) trains each model for the same
wall-clock budget on one closed-form 2-D target, then writes into ``out``:

* ``<model>.png``: density ``exp log p`` on a grid, samples over the data, and the path from
  noise to data (layer by layer for bijections, ODE trajectories for continuous models);
* ``gallery.json``: one row per model: KL (exact target, nats), test NLL, W2 of 1 000 samples,
  training time and steps, sampling time for 1 000 samples, NFE of one sampling solve;
* ``comparison.png``: the table as bar charts; ``index.html``: one self-contained page (the
  PNGs embedded as data URIs), viewable offline.

Python: :func:`run_gallery`.
"""

from __future__ import annotations

import base64
import html
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pushforward._utils import batched

DEFAULT_MODELS = (
    "planar", "radial", "nice", "realnvp", "maf", "iaf", "nsf", "residual",
    "ffjord", "score-vp", "fm", "ot-fm", "vp-fm", "sb-fm", "rectified",
)

# Families, for the page: which contract each model trains under.
FAMILY = {
    "planar": "bijection (NF)", "radial": "bijection (NF)", "nice": "coupling (NF)", "realnvp": "coupling (NF)",
    "maf": "autoregressive (NF)", "iaf": "autoregressive (NF)", "nsf": "spline coupling (NF)",
    "residual": "residual (NF)", "ffjord": "continuous (max. likelihood)", "score-vp": "score-based (SDE)",
    "score-ve": "score-based (SDE)", "score-subvp": "score-based (SDE)", "fm": "flow matching",
    "ot-fm": "flow matching", "vp-fm": "flow matching", "sb-fm": "flow matching", "rectified": "flow matching",
}


def _grid_density(model, lo, hi, n_grid: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    xs = torch.linspace(lo[0], hi[0], n_grid)
    ys = torch.linspace(lo[1], hi[1], n_grid)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
    with torch.no_grad():
        lp = batched(model.log_prob, pts, batch_size=4096)
    p = torch.nan_to_num(lp.exp(), nan=0.0, posinf=0.0).reshape(n_grid, n_grid)
    return gx, gy, p


def _paths(model, n: int) -> torch.Tensor:
    """[T, n, 2] from noise to data (user units)."""
    from pushforward.viz import flow_frames

    return torch.stack(flow_frames(model, n=n, steps=24))


def _figure(name: str, model, data: torch.Tensor, samples: torch.Tensor, row: dict, path: Path, n_grid: int) -> None:
    from pushforward.viz._common import _figure as agg_figure

    lo = (data.quantile(0.002, 0) - 0.6).tolist()
    hi = (data.quantile(0.998, 0) + 0.6).tolist()
    fig, ax = agg_figure(3, 4.0, layout="tight")
    try:
        gx, gy, p = _grid_density(model, lo, hi, n_grid)
        ax[0].pcolormesh(gx.numpy(), gy.numpy(), p.numpy(), shading="auto", cmap="viridis")
        ax[0].set_title(f"density, KL {row['kl']:.3f}", fontsize=10)
    except Exception as e:  # a model without a usable density still gets its other panels
        ax[0].text(0.5, 0.5, f"no density:\n{type(e).__name__}", ha="center", va="center", transform=ax[0].transAxes)
    d = data[:1500]
    s = samples[:1500]
    ax[1].scatter(d[:, 0], d[:, 1], s=2, color="0.7", label="data")
    ax[1].scatter(s[:, 0], s[:, 1], s=2, color="C3", label="samples")
    ax[1].set_title(f"samples, W2 {row['w2']:.3f}", fontsize=10)
    ax[1].legend(fontsize=7, markerscale=4, loc="upper right")
    try:
        tr = _paths(model, 200)
        for i in range(tr.shape[1]):
            ax[2].plot(tr[:, i, 0], tr[:, i, 1], lw=0.4, color="C0", alpha=0.5)
        ax[2].scatter(tr[-1, :, 0], tr[-1, :, 1], s=3, color="C3")
        ax[2].set_title("noise → data (layers / ODE steps)", fontsize=10)
    except Exception as e:
        ax[2].text(0.5, 0.5, f"no paths:\n{type(e).__name__}", ha="center", va="center", transform=ax[2].transAxes)
    for a in ax:
        a.set_xlim(lo[0], hi[0])
        a.set_ylim(lo[1], hi[1])
        a.set_aspect("equal")
    fig.suptitle(f"{name} ({FAMILY.get(name, '')}): {row['train_steps']} steps in {row['train_s']:.0f} s")
    fig.savefig(path, dpi=90)


def _comparison(rows: list[dict], path: Path) -> None:
    from pushforward.viz._common import _figure as agg_figure

    ok = [r for r in rows if r.get("error") is None]
    names = [r["model"] for r in ok]
    cols = [("kl", "KL (nats)"), ("w2", "W2"), ("sample_s", "sample 1000 (s)")]
    fig, ax = agg_figure(3, 14 / 3, 0.35 * len(names) + 1.5, layout="tight")
    for a, (key, label) in zip(ax, cols):
        vals = [r[key] if r[key] is not None and math.isfinite(r[key]) else 0.0 for r in ok]
        a.barh(names, vals, color="C0")
        a.set_xlabel(label)
        a.invert_yaxis()
        if key == "sample_s":
            a.set_xscale("log")
    fig.savefig(path, dpi=90)


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.{nd}f}" if abs(v) >= 10 ** -nd else f"{v:.1e}"
    return str(v)


COLUMNS = (("model", "model"), ("family", "family"), ("kl", "KL (nats)"), ("nll", "test NLL"), ("w2", "W2"),
           ("train_s", "train (s)"), ("train_steps", "steps"), ("sample_s", "sample 1k (s)"), ("nfe", "NFE"))


def markdown_table(rows: list[dict]) -> str:
    """The comparison table in Markdown (the docs' "which model" page quotes it)."""
    head = "| " + " | ".join(h for _, h in COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    body = "".join("| " + " | ".join(_fmt(r.get(k)) for k, _ in COLUMNS) + " |\n" for r in rows)
    return head + body


def _html(rows: list[dict], meta: dict, out: Path) -> str:
    def img(name: str) -> str:
        p = out / name
        if not p.exists():
            return ""
        b64 = base64.b64encode(p.read_bytes()).decode("ascii")
        return f'<img alt="{html.escape(name)}" src="data:image/png;base64,{b64}">'

    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(k)))}</td>" for k, _ in COLUMNS) + "</tr>" for r in rows
    )
    figs = "".join(
        f'<section id="{html.escape(r["model"])}"><h2>{html.escape(r["model"])}</h2>'
        + (img(f"{r['model']}.png") if r.get("error") is None else f"<p>failed: {html.escape(r['error'])}</p>")
        + "</section>"
        for r in rows
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pushforward gallery</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }}
table {{ border-collapse: collapse; font-size: 14px; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th:first-child, td:first-child, td:nth-child(2) {{ text-align: left; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>pushforward gallery: every family on <code>{html.escape(meta["data"])}</code></h1>
<p>{html.escape(meta["note"])}</p>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
{img("comparison.png")}
{figs}
</body></html>
"""


def run_gallery(
    out: str | Path = "gallery_out",
    data: str = "8gaussians",
    models: Sequence[str] = DEFAULT_MODELS,
    max_time: float = 20.0,
    n_train: int = 20_000,
    n_eval: int = 1000,
    n_grid: int = 80,
    seed: int = 0,
    progress: bool = True,
) -> list[dict]:
    """Train every model in ``models`` for ``max_time`` seconds on the closed-form target ``data``.

    Args:
        out: output directory (created).
        data: a 2-D target with an exact density (``pf.data.get_target``: ``8gaussians``,
            ``ring``, ``spiral``, ``checkerboard``); KL is then exact up to Monte Carlo error.
        models: model names (2-D vector models).
        max_time: training seconds per model.
        n_train: training points.
        n_eval: points for KL/NLL/W2 and the sample timing.
        n_grid: density grid points per axis.
    Returns:
        One dict per model (also written to ``gallery.json``): ``model, family, kl, nll, w2,
        train_s, train_steps, sample_s, nfe`` (``nfe`` None for bijections: one pass per
        layer) and ``error`` (None, or the message when the model failed).
    """
    import pushforward as pf

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = pf.data.get_target(data)
    if target.dim != 2:
        raise ValueError(f"the gallery draws 2-D models; target {data!r} has dim={target.dim}")
    g = torch.Generator().manual_seed(seed)
    x = target.sample(n_train, generator=g)
    test = target.sample(n_eval, generator=g)
    rows: list[dict] = []
    for name in models:
        row: dict[str, Any] = {"model": name, "family": FAMILY.get(name, ""), "error": None}
        if progress:
            print(f"gallery: {name} ({max_time:g} s) ...", flush=True)
        try:
            torch.manual_seed(seed)
            model = pf.build(name, 2)
            hist = pf.fit(model, x, max_time=max_time, seed=seed, progress=False, val_fraction=0)
            model.eval()
            row.update(train_s=float(hist.elapsed), train_steps=int(hist.steps))
            with torch.no_grad():
                t0 = time.perf_counter()
                samples = model.sample(n_eval, generator=torch.Generator().manual_seed(seed + 1))
                row["sample_s"] = time.perf_counter() - t0
            row["nfe"] = int(model.nfe) if getattr(model, "nfe", None) is not None else None
            row["w2"] = pf.metrics.w2(samples, test)
            row["nll"] = pf.metrics.nll(model, test)
            row["kl"] = pf.metrics.kl(target, model, n=n_eval, seed=seed + 2)
            _figure(name, model, x, samples, row, out / f"{name}.png", n_grid)
        except Exception as e:  # one failing model must not sink the whole gallery
            row["error"] = f"{type(e).__name__}: {e}"
            for k in ("kl", "nll", "w2", "train_s", "train_steps", "sample_s", "nfe"):
                row.setdefault(k, None)
            if progress:
                print(f"gallery: {name} failed: {row['error']}", flush=True)
        rows.append(row)
    _comparison(rows, out / "comparison.png")
    meta = {
        "data": data, "max_time": max_time, "n_train": n_train, "n_eval": n_eval, "seed": seed,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "note": (f"Each model trained {max_time:g} s on {n_train} points of {data} (CPU, "
                 f"{torch.get_num_threads()} thread(s)); KL by {n_eval} target samples, NLL and W2 on {n_eval} "
                 "held-out points, sampling time for 1000 samples with each model's default sampler."),
    }
    (out / "gallery.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (out / "gallery.md").write_text(markdown_table(rows))
    (out / "index.html").write_text(_html(rows, meta, out), encoding="utf-8")
    if progress:
        print(markdown_table(rows))
        print(f"gallery: wrote {out}/index.html")
    return rows


def cli_gallery(args) -> int:
    """``pushforward gallery`` / ``pushforward demo --gallery``."""
    models = DEFAULT_MODELS
    if getattr(args, "models", None):
        models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    out = args.out if getattr(args, "out", None) not in (None, "demo_out") else "gallery_out"
    data = getattr(args, "data", None)
    if data in (None, "moons"):  # the demo's default has no closed-form density: use a target
        data = "8gaussians"
    rows = run_gallery(out, data=data, models=models, max_time=float(args.max_time), seed=int(getattr(args, "seed", 0)))
    return 1 if all(r["error"] is not None for r in rows) else 0
