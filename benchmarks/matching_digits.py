"""Class-conditional flow matching on the 8x8 digits with the small U-Net: does it learn?

Trains ``ot-fm`` (U-Net field, one-hot labels as context, condition dropout for classifier-free
guidance, OT pairs only within a class) on scikit-learn's digits for a wall-clock budget, then
asks a classifier trained on real digits (logistic regression, its held-out accuracy reported)
what the generated digits are: class accuracy of conditional samples at guidance 1 and 2, and
the same for an untrained model (chance level) as the floor. Writes
``benchmarks/results/matching_digits.{md,json,png}``.

Usage: ``python benchmarks/matching_digits.py [--budget 240]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

import pushforward as pf

RESULTS = Path(__file__).resolve().parent / "results"


def to_model(x: torch.Tensor) -> torch.Tensor:
    """Pixel levels 0..16 -> [-1, 1] (image models do not standardize per pixel)."""
    return x / 8.0 - 1.0


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1.0) * 8.0).clamp(0.0, 16.0)


def digits_and_classifier():
    """The digits with one-hot labels, the fixed 1500 / 297 split, and a logistic-regression
    classifier fitted on the real training digits: ``(data, train_idx, test_idx, clf, held-out acc)``."""
    from sklearn.linear_model import LogisticRegression

    d = pf.data.load("digits8x8", context="label")
    perm = torch.randperm(len(d.x), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1500], perm[1500:]
    labels = d.context.argmax(1)
    clf = LogisticRegression(max_iter=2000).fit(d.x[train].reshape(len(train), -1).numpy(), labels[train].numpy())
    clf_acc = float(clf.score(d.x[test].reshape(len(test), -1).numpy(), labels[test].numpy()))
    return d, train, test, clf, clf_acc


def class_accuracy(clf, model, n_per_class: int, guidance: float, steps: int, seed: int,
                   solver: str | None = "midpoint") -> tuple[float, torch.Tensor]:
    """``(fraction of conditional samples the classifier labels as requested, the samples)``;
    ``solver=None`` samples with the model's own sampler (a few-step model's jumps)."""
    labels = torch.arange(10).repeat_interleave(n_per_class)
    c = torch.nn.functional.one_hot(labels, 10).float()
    with torch.no_grad():
        s = model.sample(len(labels), context=c, guidance=guidance, steps=steps, solver=solver,
                         generator=torch.Generator().manual_seed(seed))
    pred = clf.predict(to_pixels(s).reshape(len(labels), -1).numpy())
    return float((pred == labels.numpy()).mean()), s


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=float, default=240.0, help="training seconds")
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--steps", type=int, default=16, help="midpoint steps when sampling")
    p.add_argument("--per-class", type=int, default=50)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    d, train, test, clf, clf_acc = digits_and_classifier()

    def build():
        return pf.build("ot-fm", image_shape=(1, 8, 8), context_dim=10, cond_drop=0.1, by_context=True,
                        width=args.width)

    untrained = build()
    floor, _ = class_accuracy(clf, untrained, args.per_class, 1.0, args.steps, seed=1)
    model = build()
    t0 = time.time()
    hist = pf.fit(model, to_model(d.x[train]), context=d.context[train], max_time=args.budget, seed=0,
                  progress=False, checkpoint_every=None)
    train_s = time.time() - t0
    rows = {}
    samples = None
    for g in (1.0, 2.0):
        acc, s = class_accuracy(clf, model, args.per_class, g, args.steps, seed=1)
        rows[f"guidance {g:g}"] = acc
        if g == 2.0:
            samples = s
    with torch.no_grad():
        nll = -model.log_prob(to_model(d.x[test[:100]]), d.context[test[:100]], solver="midpoint", steps=args.steps)
    # bits/dim of the continuous [-1, 1] images, a sanity figure rather than a benchmark metric
    bpd = float(nll.mean() / (64 * np.log(2)))
    out = {"classifier_heldout_accuracy": clf_acc, "untrained_class_accuracy": floor, "class_accuracy": rows,
           "train_s": round(train_s, 1), "train_steps": hist.steps, "final_loss": float(hist.loss[-1]),
           "heldout_nll_bits_per_dim_continuous": bpd, "width": args.width, "sample_steps": args.steps,
           "params": sum(q.numel() for q in model.parameters()),
           "load_average_1min": os.getloadavg()[0], "torch": torch.__version__}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "matching_digits.json").write_text(json.dumps(out, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(10, args.per_class)
    fig, axes = plt.subplots(10, cols, figsize=(0.6 * cols, 6), squeeze=False)
    imgs = to_pixels(samples).reshape(10, args.per_class, 8, 8)[:, :cols]
    for i in range(10):
        for j in range(cols):
            axes[i, j].imshow(imgs[i, j].numpy(), cmap="gray_r", vmin=0, vmax=16)
            axes[i, j].axis("off")
    fig.suptitle("ot-fm + U-Net, one row per class, guidance 2", fontsize=9)
    fig.tight_layout()
    fig.savefig(RESULTS / "matching_digits.png", dpi=90)
    md = ["# Flow matching on the 8x8 digits (U-Net, class-conditional)", "",
          f"`python benchmarks/matching_digits.py --budget {args.budget:g}` on {time.strftime('%Y-%m-%d')}: "
          f"{out['train_steps']} steps in {out['train_s']} s (one CPU thread, load average "
          f"{out['load_average_1min']:.1f}), U-Net width {args.width} ({out['params']} parameters), "
          f"1500 training images, {args.steps} midpoint steps per sample.", "",
          "A logistic-regression classifier trained on real digits "
          f"({clf_acc:.3f} accuracy on the 297 held-out real images) labels {10 * args.per_class} generated "
          "digits; accuracy = how often it agrees with the class the sample was generated for.", "",
          "| model | class accuracy of generated digits |", "|---|---|",
          f"| untrained (floor, chance = 0.1) | {floor:.3f} |"]
    md += [f"| ot-fm, {k} | {v:.3f} |" for k, v in rows.items()]
    md += ["", f"Held-out NLL of the continuous [-1, 1] images: {bpd:.3f} bits/dim.", "",
           "![samples](matching_digits.png)", ""]
    (RESULTS / "matching_digits.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
