"""Every constructor argument of every registered class is validated (issue 17, item 12).

For each ``pf.build`` name, the class is called with the arguments ``build`` would give it, and
then once per int/float argument with a bad value in its place: a negative or NaN number and a
value of the wrong type. Each must raise ``ValueError``/``TypeError`` whose message names the
argument, before any tensor is made.
"""

from __future__ import annotations

import inspect
import math

import pytest

import pushforward as pf
import pushforward.continuous
import pushforward.flows
import pushforward.matching
import pushforward.policy
import pushforward.score
from pushforward._validate import numeric_kind
from pushforward.registry import entry

# Build arguments for names that do not take 2-D vectors.
SPECIAL = {"cdf": dict(dim=1), "glow": dict(image_shape=(1, 4, 4)), "tarflow": dict(image_shape=(1, 4, 4))}
POLICY = dict(dim=2, context_dim=3)
# Arguments where a negative number is meaningful (none yet): name -> set of parameters.
NEGATIVE_OK: dict[str, set] = {}


def _build_kwargs(name: str) -> dict:
    if name == "vla-policy":  # state 2 + one 3x16x16 camera + 48 text bytes
        return dict(dim=2, context_dim=2 + 768 + 48, image_shape=(3, 16, 16))
    if name.endswith("-policy"):
        return dict(POLICY)
    return dict(SPECIAL.get(name, {"dim": 2}))


def _good_args(name: str) -> dict:
    """The arguments ``pf.build(name, ...)`` passes to the class."""
    e = entry(name)
    kw = _build_kwargs(name)
    dim, ctx, img = kw.get("dim"), kw.get("context_dim", 0), kw.get("image_shape")
    if dim is None and img is not None:
        dim = math.prod(img)
    options = dict(e.preset)
    if e.inputs is not None:
        args = e.inputs(dim, ctx, img, options)
    else:
        params = e.parameters()
        args = {k: v for k, v in (("dim", dim), ("context_dim", ctx), ("image_shape", img)) if k in params}
    return {**args, **options}


def _numeric_params(name: str):
    cls = entry(name).factory
    good = _good_args(name)
    for p in inspect.signature(cls).parameters.values():
        value = good.get(p.name, p.default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        yield p.name, value


CASES = [(n, p, v) for n in pf.available_models() for p, v in _numeric_params(n)]


def _bad_values(value):
    bad = ["three", [-1]]
    if isinstance(value, int):
        bad += [-1, 1.5]
    else:
        bad += [float("nan"), float("inf")]
    return bad


@pytest.mark.parametrize("name, param, value", CASES, ids=[f"{n}-{p}" for n, p, _ in CASES])
def test_bad_numeric_argument_is_named(name, param, value):
    cls = entry(name).factory
    good = _good_args(name)
    cls(**good)  # the good arguments build
    for bad in _bad_values(value):
        if bad == -1 and param in NEGATIVE_OK.get(name, ()):
            continue
        with pytest.raises((ValueError, TypeError)) as e:
            cls(**{**good, param: bad})
        assert param in str(e.value), f"{name}({param}={bad!r}): {type(e.value).__name__}: {e.value}"


def test_flow_policy_action_dim():
    from pushforward.policy import FlowPolicy

    with pytest.raises(ValueError, match="action_dim"):
        FlowPolicy(obs_dim=3, action_dim=-1)


def _public_classes():
    from pushforward import transforms
    from pushforward.models import FlowModel

    mods = [transforms, pf.policy, pf.matching, pf.score, pf.flows, pf.continuous]
    seen = {}
    for mod in mods:
        for n in getattr(mod, "__all__", dir(mod)):
            obj = getattr(mod, n, None)
            if inspect.isclass(obj) and issubclass(obj, (transforms.Transform, FlowModel)):
                seen[obj.__qualname__] = obj
    return [seen[k] for k in sorted(seen)]


PARAM_CASES = [(c, p.name, kind) for c in _public_classes() for p in inspect.signature(c).parameters.values()
               if (kind := numeric_kind(p)) is not None]


@pytest.mark.parametrize("cls, param, kind", PARAM_CASES, ids=[f"{c.__name__}-{p}" for c, p, _ in PARAM_CASES])
def test_every_public_class_checks_its_numeric_arguments(cls, param, kind):
    """The check runs before the class's own code: a bad value alone is refused, named."""
    for bad in ["three", [-1], True] + ([-1, 1.5] if kind == "int" else [float("nan"), float("-inf")]):
        if bad == -1 and param in cls.signed_arguments:
            continue
        with pytest.raises((ValueError, TypeError)) as e:
            cls(**{param: bad})
        assert f"{param} must be" in str(e.value), f"{cls.__name__}({param}={bad!r}): {e.value}"
