"""The CLI's configuration layer: ``--set`` values, config files, the resolved train config and
devices, each checked before anything is written (:mod:`pushforward.cli` runs the commands)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

# fit() options the CLI owns itself.
_FIT_RESERVED = {"model", "data", "context", "out_dir", "resume", "callback", "val_data", "distributed", "seed", "device"}
_TOP_KEYS = {"model", "data", "context", "n", "seed", "device", "options", "fit", "out"}


class CLIError(ValueError):
    """A user error with a message meant for the terminal."""


def parse_value(text: str, key: str | None = None) -> Any:
    """``--set`` value: a JSON literal where it parses, else the string itself.

    Text that opens or closes a JSON list or object (``[``, ``{``, ``]``, ``}``) must parse as
    one: ``hidden=[64,64`` is an error naming ``key`` and the expected form, never the string.
    """
    alias = {"True": True, "False": False, "None": None}
    if text in alias:
        return alias[text]
    try:
        return json.loads(text)
    except ValueError:
        pass
    t = text.strip()
    if t[:1] in "[{" or t[-1:] in "]}":
        if t[:1] == "{" or t[-1:] == "}":
            kind, example = "an object", '{"a": 1}'
        else:
            items = [i.strip() for i in t.strip("[]").split(",") if i.strip()]
            if items and all(re.fullmatch(r"[+-]?\d+", i) for i in items):
                kind, example = "a list of integers", "[64, 64]"
            elif items and all(re.fullmatch(r"[+-]?[\d.]+([eE][+-]?\d+)?", i) for i in items):
                kind, example = "a list of numbers", "[0.1, 0.2]"
            else:
                kind, example = "a list", '[1, 2] or ["a", "b"]'
        raise CLIError(f"{key or 'value'}: could not parse {text!r} as {kind} (JSON, e.g. {example})")
    return text


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``["a=1", "fit.lr=3e-4"] -> {"a": 1, "fit.lr": 0.0003}``.

    Raises:
        CLIError: an item without ``=`` or a key, or a malformed list/object value (naming the key).
    """
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CLIError(f"bad --set {item!r}: expected key=value (e.g. --set hidden=[64,64] or --set fit.lr=3e-4)")
        if key.endswith(".") or key.startswith(".") or ".." in key:
            raise CLIError(f"bad --set key {key!r}: expected NAME, fit.NAME or options.NAME")
        out[key] = parse_value(value.strip(), key)
    return out


def read_config(path: str) -> dict:
    """Read a JSON (or, on Python >= 3.11, TOML) config file into a dict."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no config file at {path!r}")
    text = p.read_text()
    if p.suffix.lower() == ".toml":
        try:
            import tomllib
        except ImportError:
            raise CLIError("TOML config files need Python >= 3.11; use JSON") from None
        try:
            cfg = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise CLIError(f"{path}: invalid TOML: {e}") from None
    else:
        try:
            cfg = json.loads(text)
        except json.JSONDecodeError as e:
            raise CLIError(f"{path}: invalid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(cfg, dict):
        raise CLIError(f"{path}: a config must be an object/table of settings")
    return cfg


def _apply_flat(cfg: dict, flat: dict[str, Any]) -> None:
    for key, value in flat.items():
        if key.startswith("fit."):
            cfg["fit"][key[4:]] = value
        elif key.startswith("options.") or key.startswith("model."):
            cfg["options"][key.split(".", 1)[1]] = value
        elif key in _TOP_KEYS - {"options", "fit"}:
            cfg[key] = value
        else:
            cfg["options"][key] = value


def _check_fit_options(fit_opts: dict) -> None:
    import inspect

    from pushforward.train import fit

    valid = [k for k in inspect.signature(fit).parameters if k not in _FIT_RESERVED]
    for k in fit_opts:
        if k in _FIT_RESERVED:
            raise CLIError(f"fit.{k} cannot be set here; use the command's own flag (e.g. --seed, --device, --data, --out)")
        if k not in valid:
            raise CLIError(f"unknown fit option 'fit.{k}'; valid: {', '.join(valid)}")


def check_fit_values(model, fit_opts: dict, seed: int = 0) -> None:
    """Resolve ``fit_opts`` against ``model`` exactly as :func:`pushforward.fit` will, so a bad
    value (``--steps 0``, ``--max-time -5``, ``fit.checkpoint_every=0``...) is refused before
    anything is written; raises ``ValueError`` naming the option."""
    import inspect

    from pushforward.train import fit
    from pushforward.train.config import FitConfig

    sig = inspect.signature(fit).parameters
    options = {k: p.default for k, p in sig.items() if k not in ("model", "data", "context")}
    options.update(fit_opts)
    options["seed"] = seed
    FitConfig.resolve(model, options)


def resolve_train_config(args: argparse.Namespace) -> dict:
    """Merge config file < --set < flags into the run's config dict."""
    cfg: dict[str, Any] = {"model": None, "data": None, "context": None, "n": None, "seed": 0,
                           "device": None, "options": {}, "fit": {}}
    if getattr(args, "config", None):
        raw = read_config(args.config)
        for k in ("options", "fit"):
            sub = raw.pop(k, {})
            if not isinstance(sub, dict):
                raise CLIError(f"{args.config}: {k!r} must be an object/table")
            cfg[k].update(sub)
        _apply_flat(cfg, raw)
    _apply_flat(cfg, parse_sets(args.set))
    for flag, key in (("model", "model"), ("data", "data"), ("context", "context"), ("n", "n"),
                      ("seed", "seed"), ("device", "device")):
        v = getattr(args, flag, None)
        if v is not None:
            cfg[key] = v
    for flag, key in (("max_time", "max_time"), ("steps", "steps"), ("epochs", "epochs"),
                      ("batch_size", "batch_size"), ("lr", "lr")):
        v = getattr(args, flag, None)
        if v is not None:
            cfg["fit"][key] = v
    # A step/epoch budget on the command line replaces the default time budget.
    if (getattr(args, "steps", None) or getattr(args, "epochs", None)) and getattr(args, "max_time", None) is None:
        cfg["fit"]["max_time"] = None
    if not cfg["model"]:
        raise CLIError("no model given: pushforward train MODEL --data DATA (see `pushforward models`)")
    if not cfg["data"]:
        raise CLIError("no data given: use --data NAME_OR_FILE (see `pushforward datasets`)")
    if not isinstance(cfg["seed"], int) or isinstance(cfg["seed"], bool):
        raise CLIError(f"seed must be an integer, got {cfg['seed']!r}")
    if not isinstance(cfg["options"], dict):
        raise CLIError(f"model options must be an object/table of settings, got {cfg['options']!r}")
    _check_fit_options(cfg["fit"])
    if cfg["device"] not in (None, "auto"):
        if not isinstance(cfg["device"], str):
            raise CLIError(f"device must be a string such as cpu, cuda or cuda:N, got {cfg['device']!r}")
        _device(cfg["device"])  # refuse an unknown or absent device before anything is written
    return cfg


# ============================================================================ helpers


def _device(spec: str | None):
    import torch

    from pushforward import distributed as ddp

    if spec in (None, "auto"):
        if ddp.is_initialized() and ddp.get_world_size() > 1:
            return ddp.default_device()
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise CLIError(f"unknown device {spec!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise CLIError(f"unsupported device {spec!r}; use cpu, cuda, cuda:N or auto")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"device {spec!r} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise CLIError(f"device {spec!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise CLIError(f"device {spec!r} requested but MPS is not available")
    return dev
