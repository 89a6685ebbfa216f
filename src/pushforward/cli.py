"""The ``pushforward`` command line: a run is a directory.

::

    pushforward train MODEL --data DATA [--context COLS] [--n-points N] [--max-time S | --steps N]
                      [--out DIR] [--set key=value ...] [--config FILE] [--seed S] [--device D]
    pushforward resume DIR [--max-time S | --steps N] [--data DATA]
    pushforward sample DIR -n N -o FILE(.npy|.csv) [--context VALUES|FILE | --context-file FILE]
    pushforward eval DIR [--data DATA]        # one JSON line: nll, bpd, w2, ...
    pushforward plot DIR                      # PNGs (and a GIF) into DIR/plots/
    pushforward demo [--out DIR] [--max-time S] [--gallery]
    pushforward gallery [--out DIR] [--data TARGET] [--max-time S] [--models a,b,...]
    pushforward models | datasets
    pushforward bench [ARGS...]               # runs benchmarks/density.py of a source checkout

Options. ``--set key=value`` sets a model build option (``--set hidden=[64,64] --set
bins=16``); ``--set fit.key=value`` sets a :func:`pushforward.fit` option (``--set
fit.lr=3e-4 --set fit.ema=0.999``). Values are JSON literals where they parse (``true``,
``null``, numbers, lists), otherwise strings. ``--config FILE`` reads the same settings from a
JSON file (or TOML on Python >= 3.11)::

    {"model": "nsf", "data": "moons", "seed": 0,
     "options": {"hidden": [64, 64]},  "fit": {"lr": 3e-4, "max_time": 30}}

where any other top-level key is treated like ``--set key=value``. Precedence: config file <
``--set`` < explicit flags.

A run directory holds ``config.json`` (the resolved config), ``last.pt`` and ``best.pt``
(checkpoints), ``metrics.jsonl``, ``model.pt`` (the final model, loadable by
:func:`pushforward.load`) and ``plots/``.

Bad input exits with status 2 and one line on stderr naming the problem; ``--debug`` shows the
traceback. Under ``torchrun --nproc_per_node=N -m pushforward train ...`` training runs with
DDP; rank 0 writes the files (see ``docs/distributed.md``).
"""

from __future__ import annotations

import argparse
import json
import math
import runpy
import sys
import time
from pathlib import Path
from typing import Any

from pushforward.cli_config import (  # noqa: F401 - parse_value/parse_sets/read_config are public here too
    CLIError,
    _device,
    check_fit_values,
    parse_sets,
    parse_value,
    read_config,
    resolve_train_config,
)

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, IsADirectoryError, KeyError)
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (status 2)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")



def _is_main() -> bool:
    from pushforward import distributed as ddp

    return ddp.is_main_process()


def _say(msg: str) -> None:
    if _is_main():
        print(msg, flush=True)


def load_data(spec: str, context: Any = None, n: int | None = None, seed: int = 0):
    """``pushforward.data.load`` with the CLI's argument conventions."""
    from pushforward import data as pdata

    if isinstance(context, str) and context.strip() == "":
        context = None
    return pdata.load(spec, n=n, seed=seed, context=context)


def _model_shape_args(ds) -> dict:
    x = ds.x
    if x.dim() == 4:
        return {"dim": None, "image_shape": tuple(int(s) for s in x.shape[1:])}
    if x.dim() == 2:
        return {"dim": int(x.shape[1]), "image_shape": None}
    if x.dim() == 1:
        return {"dim": 1, "image_shape": None}
    raise CLIError(f"data of shape {list(x.shape)} is neither [N, D] nor [N, C, H, W]")


def build_model(cfg: dict, ds):
    """Build the model named in ``cfg`` for data ``ds``."""
    import pushforward as pf

    shape = _model_shape_args(ds)
    context_dim = 0 if ds.context is None else int(ds.context.shape[1])
    options = dict(cfg["options"])
    for k in ("dim", "context_dim", "image_shape"):
        if k in options:
            raise CLIError(f"--set {k}=... is taken from the data; remove it")
    return pf.build(cfg["model"], context_dim=context_dim, **shape, **options)


def _require_run(run: str) -> Path:
    from pushforward.train import RunDir

    return RunDir.existing(run).path


def _load_run_model(run: str, device: Any = None):
    """The run's final model (``model.pt``), else its last checkpoint; or a model file."""
    import pushforward as pf
    from pushforward.train import RunDir

    if Path(run).is_file():
        return pf.load(run, map_location=device or "cpu")
    return RunDir.existing(run).load_model(device)


def _summary_line(h, run: Path) -> str:
    last = h["loss"][-1] if h["loss"] else math.nan
    val = f", best val loss {h.best_val_loss:.4f} (step {h.best_step})" if math.isfinite(h.best_val_loss) else ""
    return (f"{h.steps} steps in {h.elapsed:.1f} s ({h.stopped_reason}); loss {last:.4f}{val}; "
            f"model in {run / 'model.pt'}")


def _write_json(path: Path, obj: Any) -> None:
    from pushforward.train.run import write_json

    write_json(path, obj)


def _fit_and_save(model, ds, cfg: dict, run, resume: Path | None, fit_opts: dict) -> int:
    """Train into the :class:`~pushforward.train.RunDir` ``run``, then write its model and history."""
    import pushforward as pf
    from pushforward import distributed as ddp

    dev = _device(cfg.get("device"))
    hist = pf.fit(model, ds.x, ds.context, out_dir=run.path, resume=resume, seed=cfg["seed"], device=dev, **fit_opts)
    run.save_model(model)
    run.write_history(hist)
    _say(_summary_line(hist, run.path))
    ddp.barrier()
    return _exit_status(hist)


def _exit_status(hist) -> int:
    """0, or for an interrupted run 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM)."""
    import signal

    if hist.stopped_reason != "interrupted":
        return 0
    sig = hist.get("signal")
    return 128 + int(signal.Signals[sig]) if sig else EXIT_INTERRUPTED


# ============================================================================ commands
def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from pushforward import distributed as ddp
    from pushforward.train import RunDir

    cfg = resolve_train_config(args)
    ddp.init_from_env(device=None if cfg["device"] in (None, "auto") else cfg["device"])
    main = ddp.is_main_process()
    out = args.out or cfg.get("out")
    run = RunDir(out, main) if out else RunDir.fresh(cfg["model"], cfg["data"], main)
    if run.path.is_dir():  # refuse early (a live run's lock, an old run), and again under the lock below
        with run.lock():
            if run.has_run() and not args.overwrite:
                raise CLIError(f"{str(run.path)!r} already holds a run; use `pushforward resume {run.path}` or --overwrite")
    ds = load_data(cfg["data"], cfg["context"], cfg["n"], cfg["seed"])
    # The initial weights come from the seed too: same seed, data and step budget, same model.
    with torch.random.fork_rng():
        torch.manual_seed(cfg["seed"])
        model = build_model(cfg, ds)
    check_fit_values(model, cfg["fit"], cfg["seed"])  # every option checked before the first write
    with run.lock():
        return _train_locked(model, ds, cfg, run, args.overwrite)


def _train_locked(model, ds, cfg: dict, run, overwrite: bool) -> int:
    """``cmd_train`` once the run directory is locked: clear it (``--overwrite``), then train."""
    import pushforward as pf

    if run.has_run():
        if not overwrite:
            raise CLIError(f"{str(run.path)!r} already holds a run; use `pushforward resume {run.path}` or --overwrite")
        run.clear()  # before anything new is written: no old model survives a crash
    resolved = {
        "model": cfg["model"], "options": cfg["options"], **{k: v for k, v in model.config.items() if k in ("dim", "context_dim", "image_shape")},
        "data": cfg["data"], "context": cfg["context"], "n": cfg["n"], "seed": cfg["seed"], "device": cfg["device"],
        "fit": cfg["fit"], "pushforward_version": pf.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    run.write_config(resolved)
    n_params = sum(p.numel() for p in model.parameters())
    budget = ", ".join(f"{k}={cfg['fit'][k]}" for k in ("max_time", "steps", "epochs") if cfg["fit"].get(k) is not None) or "max_time=60"
    _say(f"training {cfg['model']} ({n_params:,} parameters) on {ds.name or cfg['data']} {list(ds.x.shape)} "
         f"[{budget}] -> {run.path}")
    return _fit_and_save(model, ds, cfg, run, None, dict(cfg["fit"]))


def cmd_resume(args: argparse.Namespace) -> int:
    from pushforward import distributed as ddp
    from pushforward.train import RunDir

    run = RunDir.existing(args.dir, main=ddp.is_main_process())
    with run.lock():
        return _resume_locked(args, run)


def _check_resumed_model(cfg: dict, ckpt: dict, where: Path) -> str:
    """The checkpoint's model name; an error naming both when ``config.json`` says otherwise."""
    config = (ckpt.get("model") or {}).get("config") or {}
    name = config.get("name")
    if name is not None and cfg.get("model") is not None and name != cfg["model"]:
        raise CLIError(f"{where / 'last.pt'} holds a {name!r} model but {where / 'config.json'} names "
                       f"{cfg['model']!r}; the checkpoint is the source of truth: fix or remove config.json")
    for key in ("dim", "context_dim"):
        if key in config and key in cfg and config[key] != cfg[key]:
            raise CLIError(f"{where / 'last.pt'} holds a model with {key}={config[key]} but "
                           f"{where / 'config.json'} says {key}={cfg[key]}")
    return name or cfg.get("model") or type(ckpt["model"].get("module")).__name__


def _resume_locked(args: argparse.Namespace, run) -> int:
    from pushforward import distributed as ddp
    from pushforward.train import load_checkpoint

    cfg = run.read_config()
    ckpt = load_checkpoint(run.path)
    name = _check_resumed_model(cfg, ckpt, run.path)
    if args.device is not None:
        cfg["device"] = args.device
    ddp.init_from_env(device=None if cfg.get("device") in (None, "auto") else cfg["device"])
    data = args.data or cfg["data"]
    ds = load_data(data, cfg.get("context"), cfg.get("n"), cfg.get("seed", 0))
    fit_opts = run.resume_options(cfg, ckpt, args.steps, args.max_time)
    from pushforward.models import load_from_payload

    model = load_from_payload(ckpt["model"])
    _say(f"resuming {name} from step {ckpt['step']} in {run.path}")
    return _fit_and_save(model, ds, cfg, run, run.path, fit_opts)


def _context_arg(spec: str | None, n: int, model):
    import numpy as np
    import torch

    from pushforward._utils import to_tensor

    cdim = int(getattr(model, "context_dim", 0) or 0)
    if cdim == 0:
        if spec is not None:
            raise CLIError("this model is unconditional; drop --context")
        return None
    if spec is None:
        raise CLIError(f"this model is conditional (context_dim={cdim}): give --context '[v1, ...]' or a .npy/.csv file")
    p = Path(spec)
    if p.suffix.lower() in (".npy", ".csv", ".txt") or p.exists():
        if not p.is_file():
            raise FileNotFoundError(f"no context file at {spec!r}")
        arr = np.load(p) if p.suffix.lower() == ".npy" else np.loadtxt(p, delimiter="," if p.suffix.lower() == ".csv" else None, ndmin=2)
    else:
        v = parse_value(spec)
        if isinstance(v, (int, float)):
            v = [v]
        if not isinstance(v, list):
            raise CLIError(f"--context must be a JSON list of {cdim} numbers or a file, got {spec!r}")
        arr = np.asarray(v, dtype=np.float64)
    c = to_tensor(arr, "--context", dtype=torch.float32)
    if c.dim() == 1:
        c = c[None, :]
    if c.shape[1] != cdim or c.shape[0] not in (1, n):
        raise CLIError(f"context has shape {list(c.shape)}; expected [1, {cdim}] or [{n}, {cdim}]")
    return c.expand(n, -1).contiguous()


def cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from pushforward._utils import module_like

    out = Path(args.output)
    if out.suffix.lower() not in (".npy", ".csv"):
        raise CLIError(f"output must end in .npy or .csv, got {str(out)!r}")
    if args.n <= 0:
        raise CLIError(f"-n must be positive, got {args.n}")
    dev = _device(args.device)
    model = _load_run_model(args.dir, dev)
    model.eval()
    ctx = _context_arg(args.context, args.n, model)
    if ctx is not None:
        ctx = ctx.to(**module_like(model))
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    with torch.no_grad():
        s = model.sample(args.n, ctx, generator=gen)
    arr = s.detach().cpu().numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".npy":
        np.save(out, arr)
    else:
        np.savetxt(out, arr.reshape(arr.shape[0], -1), delimiter=",", fmt="%.7g")
    print(f"wrote {arr.shape[0]} samples of shape {list(arr.shape[1:])} to {out}")
    return 0


def _eval_data(args: argparse.Namespace, run: Path | None):
    cfg = {}
    if run is not None and (run / "config.json").is_file():
        cfg = json.loads((run / "config.json").read_text())
    spec = args.data or cfg.get("data")
    if not spec:
        raise CLIError("give --data NAME_OR_FILE (the run has no config.json to take it from)")
    context = args.context if args.context is not None else (cfg.get("context") if not args.data else None)
    n = args.n if args.n is not None else cfg.get("n")
    # Generated data sets: a fresh draw (another seed) rather than the training sample.
    seed = cfg.get("seed", 0) + 1 if not args.data else args.seed
    return load_data(spec, context, n, seed), cfg


def cmd_eval(args: argparse.Namespace) -> int:
    from pushforward import metrics
    from pushforward._utils import json_safe

    dev = _device(args.device)
    model = _load_run_model(args.dir, dev)
    model.eval()
    run = Path(args.dir) if Path(args.dir).is_dir() else None
    ds, _ = _eval_data(args, run)
    ds.x = ds.x.to(dev)
    if ds.context is not None:
        ds.context = ds.context.to(dev)
    res = metrics.evaluate(model, ds, n_samples=args.n_samples, seed=args.seed)
    line = json.dumps(json_safe(res), allow_nan=False)
    if run is not None:
        _write_json(run / "eval.json", res)
    print(line)
    return 0


def make_plots(run: Path, model, ds, gif: bool = True, max_points: int = 3000) -> list[Path]:
    """Write the figures that fit ``model`` (:func:`pushforward.viz.plots_for`) into ``run/plots``
    and return their paths; a figure that fails is reported on stderr and skipped."""
    import torch

    from pushforward import viz

    out = run / "plots"
    out.mkdir(parents=True, exist_ok=True)
    if ds.x.shape[0] > max_points:
        ds = ds.subset(torch.randperm(ds.x.shape[0], generator=torch.Generator().manual_seed(0))[:max_points])
    written: list[Path] = []
    with torch.no_grad():
        for name, make in viz.plots_for(model, ds, out, metrics=run / "metrics.jsonl", gif=gif):
            try:
                written.append(Path(make()))
            except Exception as e:  # one failing figure must not cost the others
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                print(f"pushforward plot: skipped {name}: {msg}", file=sys.stderr)
    return written


def cmd_plot(args: argparse.Namespace) -> int:
    run = _require_run(args.dir)
    model = _load_run_model(args.dir, _device(args.device))
    model.eval()
    ds, _ = _eval_data(args, run)
    written = make_plots(run, model, ds, gif=not args.no_gif)
    if not written:
        raise RuntimeError("no figure could be written")
    for p in written:
        print(p)
    return 0


def cmd_gallery(args: argparse.Namespace) -> int:
    from pushforward.gallery import cli_gallery

    return cli_gallery(args)


def cmd_demo(args: argparse.Namespace) -> int:
    if getattr(args, "gallery", False):
        return cmd_gallery(args)
    import torch

    import pushforward as pf
    from pushforward import metrics
    from pushforward.train import RunDir

    out = Path(args.out)
    run = RunDir(out)
    if run.has_run():
        run.clear()  # a demo folder is disposable: start over rather than refuse
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    ds = load_data(args.data, None, 10_000, args.seed)
    model = pf.build(args.model, dim=int(ds.x.shape[1]))
    cfg = {"model": args.model, "options": {}, "dim": int(ds.x.shape[1]), "context_dim": 0, "image_shape": None,
           "data": args.data, "context": None, "n": 10_000, "seed": args.seed, "device": None,
           "fit": {"max_time": args.max_time}, "pushforward_version": pf.__version__}
    run.write_config(cfg)
    print(f"demo: training {args.model} on {args.data} for {args.max_time:g} s (CPU is fine) ...", flush=True)
    hist = pf.fit(model, ds.x, max_time=args.max_time, out_dir=out, seed=args.seed, device=_device(args.device))
    run.save_model(model)
    model.eval()
    test = load_data(args.data, None, 5000, args.seed + 1)
    res = metrics.evaluate(model, test, n_samples=2000, seed=args.seed)
    summary = {"model": args.model, "data": args.data, "steps": hist.steps, "train_time_s": round(hist.elapsed, 2),
               "stopped_reason": hist.stopped_reason, "best_val_loss": hist.best_val_loss,
               **{k: res[k] for k in ("nll", "w2", "mmd", "kl") if k in res}}
    _write_json(out / "summary.json", summary)
    text = (f"{args.model} on {args.data}: {hist.steps} steps in {hist.elapsed:.1f} s; "
            f"test NLL {res.get('nll', math.nan):.3f} nats, W2 {res.get('w2', math.nan):.3f}")
    (out / "summary.txt").write_text(text + "\n")
    written = make_plots(out, model, ds, gif=not args.no_gif)
    print(text)
    print(f"figures in {out / 'plots'}: " + ", ".join(p.name for p in written))
    print(f"summary in {out / 'summary.json'}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    import pushforward as pf

    desc = pf.describe_models()
    width = max(map(len, desc), default=0)
    for name, d in desc.items():
        print(f"{name:<{width}}  {d}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from pushforward import data

    for name in data.available_datasets():
        print(name)
    return 0


def _find_bench() -> Path | None:
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        p = root / "benchmarks" / "density.py"
        if p.is_file():
            return p
    return None


def cmd_bench(args: argparse.Namespace) -> int:
    path = _find_bench()
    if path is None:
        raise CLIError("benchmarks/density.py not found: run `pushforward bench` from a source checkout of pushforward")
    old = sys.argv
    sys.argv = [str(path), *args.bench_args]
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    finally:
        sys.argv = old
    return 0


# ============================================================================ parser
def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    # SUPPRESS: a subcommand's default must not reset a --debug given before the command.
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback on errors")
    p = _Parser(prog="pushforward", description="Flow-based generative models: train, sample, evaluate, plot.",
                parents=[common])
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def budget(sp, resume: bool = False):
        g = sp.add_mutually_exclusive_group()
        g.add_argument("--max-time", type=float, help="seconds of training" + (" (more)" if resume else " (default 60)"))
        g.add_argument("--steps", type=int, help="optimizer steps" + (" (more)" if resume else ""))
        if not resume:
            g.add_argument("--epochs", type=int, help="passes over the data")

    t = sub.add_parser("train", parents=[common], help="train MODEL on DATA into a run directory")
    t.add_argument("model", nargs="?", help="model name (see `pushforward models`)")
    t.add_argument("--data", help="built-in data set name or a .npy/.npz/.csv file")
    t.add_argument("--context", help="context columns (names or indices, comma-separated) or 'label'")
    t.add_argument("--n-points", dest="n", type=int, help="number of data points (generated sets) or a random subset")
    budget(t)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--out", help="run directory (default runs/MODEL-DATA)")
    t.add_argument("--overwrite", action="store_true", help="train into a directory that holds a run")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model option (hidden=[64,64]) or fit option (fit.lr=3e-4)")
    t.add_argument("--config", help="JSON (or TOML) file with the same settings")
    t.add_argument("--seed", type=int)
    t.add_argument("--device", help="cpu, cuda, cuda:N (default: cuda when available)")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("resume", parents=[common], help="continue a run from its last checkpoint")
    r.add_argument("dir")
    budget(r, resume=True)
    r.add_argument("--data", help="data to continue on (default: the run's)")
    r.add_argument("--device")
    r.set_defaults(func=cmd_resume)

    s = sub.add_parser("sample", parents=[common], help="draw samples from a trained model")
    s.add_argument("dir", help="run directory or model file")
    s.add_argument("-n", type=int, required=True)
    s.add_argument("-o", "--output", required=True, help="FILE.npy or FILE.csv")
    s.add_argument("--context", help="conditional models: a JSON list (one row for all) or a .npy/.csv file")
    s.add_argument("--context-file", dest="context", help="same as --context with a .npy/.csv file (e.g. an "
                   "observation x_o for a posterior: one row for all samples, or one row per sample)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="cpu")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("eval", parents=[common], help="metrics of a trained model as one JSON line")
    e.add_argument("dir", help="run directory or model file")
    e.add_argument("--data", help="data (default: a fresh draw of the run's data)")
    e.add_argument("--context", help="context columns for --data")
    e.add_argument("--n-points", dest="n", type=int)
    e.add_argument("--n-samples", type=int, default=2000)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="cpu")
    e.set_defaults(func=cmd_eval)

    pl = sub.add_parser("plot", parents=[common], help="figures into DIR/plots/")
    pl.add_argument("dir")
    pl.add_argument("--data")
    pl.add_argument("--context")
    pl.add_argument("--n-points", dest="n", type=int)
    pl.add_argument("--seed", type=int, default=0)
    pl.add_argument("--no-gif", action="store_true")
    pl.add_argument("--device", default="cpu")
    pl.set_defaults(func=cmd_plot)

    d = sub.add_parser("demo", parents=[common], help="train nsf on a 2-D data set and plot it")
    d.add_argument("--out", default="demo_out")
    d.add_argument("--max-time", type=float, default=40.0)
    d.add_argument("--data", default="moons")
    d.add_argument("--model", default="nsf")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--no-gif", action="store_true")
    d.add_argument("--device")
    d.add_argument("--gallery", action="store_true",
                   help="every 2-D model family instead (see `pushforward gallery`); --max-time is per model")
    d.add_argument("--models", help="with --gallery: comma-separated model names")
    d.set_defaults(func=cmd_demo)

    ga = sub.add_parser("gallery", parents=[common],
                        help="train every 2-D model family on one target; PNGs, a table and one HTML page")
    ga.add_argument("--out", default="gallery_out")
    ga.add_argument("--data", default="8gaussians", help="a 2-D closed-form target: 8gaussians, ring, spiral, checkerboard")
    ga.add_argument("--max-time", type=float, default=20.0, help="training seconds per model")
    ga.add_argument("--models", help="comma-separated names (default: every 2-D family)")
    ga.add_argument("--seed", type=int, default=0)
    ga.set_defaults(func=cmd_gallery)

    sub.add_parser("models", parents=[common], help="list model names").set_defaults(func=cmd_models)
    sub.add_parser("datasets", parents=[common], help="list data set names").set_defaults(func=cmd_datasets)
    b = sub.add_parser("bench", parents=[common], help="run benchmarks/density.py (source checkout)")
    b.add_argument("bench_args", nargs=argparse.REMAINDER)
    b.set_defaults(func=cmd_bench)
    return p


def _one_line(e: BaseException) -> str:
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    msg = " ".join(msg.split())
    return msg or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pushforward`` console script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # usage errors (already printed as one line) and --help
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    from pushforward import distributed as ddp
    from pushforward.train import TrainingDivergedError
    from pushforward.train.run import RunLockedError

    args.debug = getattr(args, "debug", False)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("pushforward: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if args.debug:
            raise
        if isinstance(e, TrainingDivergedError):
            code = 1
        elif isinstance(e, (*USER_ERRORS, RunLockedError)):
            code = EXIT_USAGE
        else:
            code = 1
        hint = "" if code == EXIT_USAGE else " (run with --debug for the traceback)"
        print(f"pushforward {args.command}: error: {_one_line(e)}{hint}", file=sys.stderr)
        return code
    finally:
        ddp.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
