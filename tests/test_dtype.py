"""``dtype``: the evaluator's forward pass in bfloat16 or float16, θ0 and the directions kept in fp32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from distributed_surface.core.evaluate import SurfaceEvaluator


def _problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    x, y = torch.randn(40, 6), torch.randint(0, 3, (40,))
    direction = {name: torch.randn_like(p) for name, p in model.named_parameters()}
    return model, direction, x, y


def _by_hand(model, direction, x, y, a, dtype):
    """The loss at θ0 + a·d: summed in fp32, cast to ``dtype`` once, the forward pass in ``dtype``."""
    moved = {name: (p.detach() + a * direction[name]).to(dtype) for name, p in model.named_parameters()}
    out = torch.func.functional_call(model, moved, (x.to(dtype),))
    return float(nn.functional.cross_entropy(out.float().double(), y))


@pytest.mark.parametrize("vmap", ["on", "off"])
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_forward_pass_runs_in_the_dtype(dtype, vmap):
    model, direction, x, y = _problem()
    theta0 = {name: p.detach().clone() for name, p in model.named_parameters()}
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    offsets = np.array([[0.0], [0.3]])
    evaluator = SurfaceEvaluator(model, [direction], (x, y), dtype=dtype, vmap=vmap, dir_type="weights")
    losses = evaluator.evaluate(offsets)["train_loss"]
    assert all(p.dtype == torch_dtype for p in model.parameters())  # the model computes in the dtype
    for loss, (a,) in zip(losses, offsets):
        reference = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
        reference.load_state_dict(theta0)
        in_dtype, in_fp32 = (_by_hand(reference, direction, x, y, a, t) for t in (torch_dtype, torch.float32))
        if vmap == "off":
            assert loss == pytest.approx(in_dtype, rel=1e-6)
            assert abs(loss - in_dtype) < abs(in_fp32 - in_dtype) / 10
        else:  # (vmap's batched product and bias are rounded apart, the plain model's addmm once)
            assert loss == pytest.approx(in_dtype, rel=1e-3)
            assert loss != pytest.approx(in_fp32, rel=1e-7)
    # θ0 is kept in fp32: the points are reached from it, not from its cast.
    assert all(t.dtype == torch.float32 for t in evaluator._weights.theta0)
    assert all(torch.equal(t, theta0[n]) for n, t in zip(evaluator._weights.names, evaluator._weights.theta0))


def test_fp32_is_the_model_as_it_is():
    model, direction, x, y = _problem()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    evaluator = SurfaceEvaluator(model, [direction], (x, y), dir_type="weights")
    evaluator.evaluate(np.array([[0.5]]))
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())  # θ0 bit for bit


def test_unknown_dtype_is_refused():
    model, direction, x, y = _problem()
    with pytest.raises(ValueError, match="unknown dtype"):
        SurfaceEvaluator(model, [direction], (x, y), dtype="fp8")


def test_a_plain_model_runs_in_bf16_and_records_it(dsurf, run_args, tmp_path):
    """``--dtype`` is for every model (the tiny problem's floating inputs are cast too), recorded in the
    config; the values differ from fp32's by a bfloat16-sized amount."""
    from distributed_surface.storage import read_surface

    for dtype in ("fp32", "bf16"):
        rc, out, err = dsurf(*run_args, "--x", "-1:1:3", "--y", "-1:1:3", "--dtype", dtype, "--out", f"{dtype}.h5")
        assert rc == 0, err
    fp32, bf16 = (read_surface(str(tmp_path / f"{d}.h5")) for d in ("fp32", "bf16"))
    assert bf16.config["dtype"] == "bf16"
    a, b = fp32.metrics["train_loss"], bf16.metrics["train_loss"]
    assert np.isfinite(b).all() and not np.array_equal(a, b)
    assert np.allclose(a, b, rtol=5e-2)


@pytest.mark.parametrize("flags", [["--measure", "hessian"], ["--directions", "hessian"]])
def test_the_hessian_is_refused_in_bf16(flags, dsurf, run_args, tmp_path):
    from helpers import assert_one_line_error

    rc, out, err = dsurf(*run_args, "--x", "-1:1:3", "--y", "-1:1:3", "--dtype", "bf16", *flags, "--out", "s.h5")
    assert_one_line_error(rc, out, err, "--dtype bf16", "Hessian", "fp32")
    assert not (tmp_path / "s.h5").exists()
