"""Every transform: inverse round trip, log|det J| against autograd, gradients, context,
save/load, dtype. Cases come from ``tests/cases_*.py``."""

from __future__ import annotations

import copy
import glob
import importlib
import io
import os

import pytest
import torch

from _cases import Case


def _collect() -> list[Case]:
    cases = []
    here = os.path.dirname(__file__)
    for path in sorted(glob.glob(os.path.join(here, "cases_*.py"))):
        mod = importlib.import_module(os.path.basename(path)[:-3])
        cases.extend(mod.CASES)
    return cases


CASES = _collect()
N = 4


def _inputs(case: Case, n: int = N, seed: int = 1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    if case.data_fn is not None:
        x = case.data_fn(n, g).to(dtype)
    else:
        x = case.data_scale * torch.randn((n, *case.event_shape), generator=g, dtype=dtype)
    c = torch.randn((n, case.context_dim), generator=g, dtype=dtype) if case.context_dim else None
    return x, c


def _make(case: Case, dtype=torch.float64, seed: int = 0):
    torch.manual_seed(seed)
    t = case.make().to(dtype)
    if case.perturb:
        g = torch.Generator().manual_seed(seed + 100)
        with torch.no_grad():
            for p in t.parameters():
                p.add_(case.perturb * torch.randn(p.shape, generator=g, dtype=p.dtype))
    if case.init_data:
        x, c = _inputs(case, n=64, seed=7, dtype=dtype)
        t.initialize(x, c)
    return t


@pytest.fixture(params=CASES, ids=lambda c: c.name)
def case(request):
    return request.param


def test_shapes(case):
    t = _make(case)
    x, c = _inputs(case)
    z, ladj = t(x, c)
    assert z.shape == x.shape
    assert ladj.shape == (N,)
    assert torch.isfinite(z).all() and torch.isfinite(ladj).all()


def test_inverse_round_trip(case):
    t = _make(case)
    x, c = _inputs(case)
    with torch.no_grad():
        z, ladj = t(x, c)
        x2, ladj_inv = t.inverse(z, c)
    assert torch.allclose(x2, x, atol=case.inverse_tol, rtol=0), (x2 - x).abs().max()
    assert torch.allclose(ladj_inv, -ladj, atol=max(case.inverse_tol, case.ladj_tol), rtol=0)


def test_logabsdet_matches_autograd(case):
    t = _make(case)
    x, c = _inputs(case, n=3)
    _, ladj = t(x, c)
    d = x[0].numel()
    for i in range(x.shape[0]):
        ci = None if c is None else c[i : i + 1]

        def f(v, ci=ci):
            return t(v.reshape(1, *case.event_shape), ci)[0].reshape(d)

        J = torch.autograd.functional.jacobian(f, x[i].reshape(d))
        _, expected = torch.linalg.slogdet(J)
        err = float((ladj[i] - expected).detach())
        assert abs(err) < case.ladj_tol, (float(ladj[i].detach()), float(expected))


def _trainable(case: Case) -> bool:
    return any(p.requires_grad for p in case.make().parameters())


# Generated only for the cases they apply to (no skips): transforms with trainable parameters,
# conditional transforms.
TRAINABLE = [c for c in CASES if _trainable(c)]
CONDITIONAL = [c for c in CASES if c.context_dim]


def test_the_filtered_case_lists_are_not_empty():
    assert TRAINABLE and CONDITIONAL and len(TRAINABLE) < len(CASES) + 1


@pytest.mark.parametrize("case", TRAINABLE, ids=lambda c: c.name)
def test_every_parameter_gets_gradient(case):
    t = _make(case)
    params = [(n, p) for n, p in t.named_parameters() if p.requires_grad]
    assert params
    x, c = _inputs(case)
    z, ladj = t(x, c)
    (z.pow(2).sum() + ladj.sum()).backward()
    if not case.grads_all:
        return
    missing = [n for n, p in params if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())]
    zero = [n for n, p in params if p.requires_grad and p.grad is not None and p.grad.abs().sum() == 0]
    assert not missing, f"no/non-finite gradient for {missing}"
    assert not zero, f"zero gradient for {zero}"


@pytest.mark.parametrize("case", CONDITIONAL, ids=lambda c: c.name)
def test_context_changes_output(case):
    t = _make(case)
    x, c = _inputs(case)
    z1, l1 = t(x, c)
    z2, l2 = t(x, c + 1.0)
    assert not torch.allclose(z1, z2) or not torch.allclose(l1, l2)


def test_state_dict_and_pickle_round_trip(case):
    t = _make(case)
    x, c = _inputs(case)
    with torch.no_grad():
        z, ladj = t(x, c)
    fresh = case.make().to(torch.float64)
    fresh.load_state_dict(t.state_dict())
    buf = io.BytesIO()
    torch.save(t, buf)
    buf.seek(0)
    pickled = torch.load(buf, weights_only=False)
    with torch.no_grad():
        for other in (fresh, pickled, copy.deepcopy(t)):
            z2, l2 = other(x, c)
            assert torch.allclose(z, z2, atol=1e-10) and torch.allclose(ladj, l2, atol=1e-10)


def test_float32_follows_input(case):
    t = _make(case, dtype=torch.float32)
    x, c = _inputs(case, dtype=torch.float32)
    z, ladj = t(x, c)
    assert z.dtype == torch.float32 and ladj.dtype == torch.float32
    x2, _ = t.inverse(z.detach(), c)
    assert x2.dtype == torch.float32
