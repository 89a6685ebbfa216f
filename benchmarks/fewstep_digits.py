"""Class-conditional few-step models on the 8x8 digits: does ONE step give the requested class?

Issue #13's target: a classifier trained on real digits agrees with the requested class for at
least 95% of one-step samples. Trains each few-step model (``shortcut``, ``meanflow``,
``consistency``; U-Net field, one-hot labels as context, condition dropout 0.1 for
classifier-free guidance) with ``pf.fit(..., max_time=budget)`` on the same 1500 training images
as ``benchmarks/matching_digits.py`` (whose pixel scaling it imports), then samples
``10 * per_class`` digits with the few-step map (``sample(n, context=c, steps=k, guidance=w)``, no
solver) at k = 1, 2, 4 and w = 1, 2, and asks the logistic-regression classifier (its held-out
accuracy on real digits reported) what they are. Writes ``benchmarks/results/fewstep_digits.{md,json}``.

``meanflow+guided`` is meanflow with the guidance scale as a network input
(``guidance_range=(1, 3)``: one network call per step at w = 2 instead of two).

Usage: ``python benchmarks/fewstep_digits.py [--budget 150] [--models shortcut meanflow consistency]
[--tag NAME]`` (``--tag`` writes ``fewstep_digits_NAME.{md,json}`` instead).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from matching_digits import class_accuracy, digits_and_classifier, to_model  # noqa: E402

import pushforward as pf  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=float, default=150.0, help="training seconds per model")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--models", nargs="+", default=["shortcut", "meanflow", "consistency"])
    p.add_argument("--tag", default=None, help="write fewstep_digits_TAG.{md,json}")
    args = p.parse_args(argv)
    stem = "fewstep_digits" + (f"_{args.tag}" if args.tag else "")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    d, train, test, clf, clf_acc = digits_and_classifier()
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()

    results = {}
    for name in args.models:
        torch.manual_seed(0)
        base, _, variant = name.partition("+")
        extra = {"guidance_range": (1.0, 3.0)} if variant == "guided" else {}
        model = pf.build(base, image_shape=(1, 8, 8), context_dim=10, cond_drop=0.1, width=args.width, **extra)
        t0 = time.time()
        hist = pf.fit(model, to_model(d.x[train]), context=d.context[train], max_time=args.budget, seed=0,
                      progress=False, checkpoint_every=None)
        train_s = time.time() - t0
        model.eval()
        acc = {}
        for k in (1, 2, 4):
            for g in (1.0, 2.0):
                acc[f"steps {k}, guidance {g:g}"] = class_accuracy(clf, model, args.per_class, g, k, seed=1, solver=None)[0]
        results[name] = {"train_s": round(train_s, 1), "train_steps": hist.steps,
                         "final_loss": float(hist.loss[-1]),
                         "params": sum(q.numel() for q in model.parameters()), "agreement": acc}
        print(name, json.dumps(results[name]), flush=True)

    uptime_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    out = {"classifier_heldout_accuracy": clf_acc, "budget_s_per_model": args.budget, "width": args.width,
           "n_samples": 10 * args.per_class, "models": results, "uptime_before": uptime_before,
           "uptime_after": uptime_after, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
           "target": "one-step agreement >= 0.95"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=1))
    keys = list(next(iter(results.values()))["agreement"])
    md = ["# Few-step models on the 8x8 digits (U-Net, class-conditional)", "",
          f"`python benchmarks/fewstep_digits.py --budget {args.budget:g}` on {time.strftime('%Y-%m-%d')}: "
          f"{args.budget:g} s of `pf.fit` per model on one CPU thread, U-Net width {args.width}, "
          "1500 training images, one-hot labels as context, condition dropout 0.1.", "",
          f"Machine load: before `{uptime_before}`; after `{uptime_after}`.", "",
          f"A logistic-regression classifier trained on real digits ({clf_acc:.3f} accuracy on the 297 "
          f"held-out real images) labels {10 * args.per_class} generated digits ({args.per_class} per class) made by the "
          "few-step map (`sample(n, context=c, steps=k, guidance=w)`, no ODE solver); agreement = how "
          "often it gives the class the sample was generated for. Target (issue #13): >= 0.95 at one step.", "",
          "| model | train steps | " + " | ".join(keys) + " |",
          "|---|---|" + "---|" * len(keys)]
    for name, r in results.items():
        md.append(f"| {name} | {r['train_steps']} | " + " | ".join(f"{r['agreement'][k]:.3f}" for k in keys) + " |")
    best = max((r["agreement"][k], n, k) for n, r in results.items() for k in keys if k.startswith("steps 1,"))
    md += ["", f"Best one-step agreement: {best[0]:.3f} ({best[1]}, {best[2]}); target 0.95 "
           f"{'met' if best[0] >= 0.95 else 'NOT met'} at this budget.", ""]
    (RESULTS / f"{stem}.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
