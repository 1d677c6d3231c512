"""Curvature: the Hessian at θ0 against the exact one (torch.autograd.functional.hessian, float64) and
against PyHessian; per-point eigenvalue maps against cold-started computations, under mpirun and
resumed; Hessian-eigenvector directions; and the bad input that goes with them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distributed_surface.core.curvature import CurvatureEvaluator
from distributed_surface.core.directions import base_tensors, make_directions, normalize_direction
from distributed_surface.core.evaluate import SurfaceEvaluator
from distributed_surface.core.hessian import (
    HessianOperator,
    extreme_eigenpairs,
    hessian_parameters,
    hutchinson_trace,
    lanczos,
    spectral_density,
)
from distributed_surface.core.losses import cross_entropy
from distributed_surface.storage import open_checked, read_directions, read_eigenvectors, read_spectrum, read_surface
from helpers import assert_one_line_error

MPIRUN = shutil.which("mpirun")


def exact_hessian(tiny, names, x, y, point=None):
    """The Hessian of the mean cross-entropy over (x, y) in float64, with respect to ``names``."""
    model = tiny.model().double().eval()
    own = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    if point is not None:
        own = {**own, **{k: v.double() for k, v in point.items()}}
    fixed = {k: v.detach() for k, v in own.items() if k not in names}
    shapes = [own[n].shape for n in names]
    sizes = [own[n].numel() for n in names]

    def loss(flat):
        pieces = {n: t.reshape(s) for n, t, s in zip(names, torch.split(flat, sizes), shapes)}
        out = torch.func.functional_call(model, {**fixed, **pieces}, (x.double(),))
        return F.cross_entropy(out, y)

    flat = torch.cat([own[n].detach().reshape(-1) for n in names])
    return torch.autograd.functional.hessian(loss, flat).numpy()


@pytest.fixture
def operator(tiny):
    model = tiny.model().eval()
    x, y = tiny.data()
    names = hessian_parameters(model, "weights")
    op = HessianOperator(model, names, [(x[:40], y[:40]), (x[40:], y[40:])], cross_entropy, len(y))
    return op, exact_hessian(tiny, names, x, y)


def test_products_eigenvalues_and_trace_against_the_exact_hessian(operator):
    op, hessian = operator
    assert op.size == hessian.shape[0] <= 300
    exact = np.linalg.eigvalsh(hessian)
    v = np.random.default_rng(3).standard_normal(op.size)
    np.testing.assert_allclose(op.matvec(v), hessian @ v, rtol=0, atol=1e-6 * np.abs(hessian @ v).max())
    top = extreme_eigenpairs(op, k=3, which="LA", tol=1e-10)
    np.testing.assert_allclose(top.values, exact[::-1][:3], rtol=1e-6)
    for value, vector in zip(top.values, top.vectors):  # unit eigenvectors of H
        np.testing.assert_allclose(hessian @ vector, value * vector, atol=1e-5 * abs(exact).max())
    bottom = extreme_eigenpairs(op, k=1, which="SA", tol=1e-10)
    assert bottom.values[0] == pytest.approx(exact[0], rel=1e-6)
    trace, stderr = hutchinson_trace(op, probes=200)
    assert abs(trace - np.trace(hessian)) < 3 * stderr and stderr < 0.2 * abs(np.trace(hessian))


def test_spectral_density_moments(operator):
    """Lanczos quadrature reproduces each probe's first two moments exactly: Σ τθ = v̂ᵀHv̂ and
    Σ τθ² = ‖Hv̂‖², and the density integrates to one."""
    op, hessian = operator
    rng = np.random.default_rng(5)
    start = rng.standard_normal(op.size)
    alphas, betas = lanczos(op, start, 30)
    theta, vectors = np.linalg.eigh(np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1))
    tau = vectors[0] ** 2
    unit = start / np.linalg.norm(start)
    assert np.sum(tau * theta) == pytest.approx(unit @ hessian @ unit, rel=1e-6)
    assert np.sum(tau * theta**2) == pytest.approx(np.sum((hessian @ unit) ** 2), rel=1e-5)
    density = spectral_density(op, probes=3, steps=30)
    assert np.trapezoid(density.density, density.grid) == pytest.approx(1.0, abs=1e-3)
    exact = np.linalg.eigvalsh(hessian)
    assert density.grid[0] < exact[0] and density.grid[-1] > exact[-1]  # the whole spectrum is covered


def test_against_pyhessian(tiny):
    from pyhessian import hessian as PyHessian

    model, (x, y) = tiny.model().eval(), tiny.data()
    torch.manual_seed(0)
    theirs = PyHessian(tiny.model().eval(), torch.nn.CrossEntropyLoss(), data=(x, y), cuda=False)
    their_top = theirs.eigenvalues(maxIter=500, tol=1e-6, top_n=1)[0][0]
    their_trace = np.asarray(theirs.trace(maxIter=200, tol=1e-9))
    op = HessianOperator(model, hessian_parameters(model, "all"), [(x, y)], cross_entropy, len(y))  # PyHessian: all
    top = extreme_eigenpairs(op, k=1, tol=1e-10).values[0]
    assert top == pytest.approx(their_top, rel=1e-3)
    trace, stderr = hutchinson_trace(op, probes=200)
    their_stderr = their_trace.std(ddof=1) / np.sqrt(len(their_trace))
    assert abs(trace - their_trace.mean()) < 3 * np.hypot(stderr, their_stderr)


def test_per_point_eigenvalues_equal_cold_started_ones(tiny):
    model = tiny.model()
    x, y = tiny.data()
    directions = make_directions(base_tensors(model, "weights"), 2, "filter", "biasbn", 0)
    inner = SurfaceEvaluator(tiny.model(), directions, (x, y), cross_entropy, 64, vmap="off")
    curvature = CurvatureEvaluator(inner, tol=1e-8)
    assert [m.name for m in curvature.measurements][-3:] == ["train_hess_max", "train_hess_min", "train_hess_products"]
    offsets = np.array([[0.0, 0.0], [0.1, 0.0], [0.2, 0.05]])
    got = curvature.evaluate(offsets)
    names = hessian_parameters(model, "weights")
    for k, offset in enumerate(offsets):
        point = {n: (base_tensors(model, "weights")[n] + offset[0] * directions[0][n] + offset[1] * directions[1][n])
                 for n in names}  # fmt: skip
        exact = np.linalg.eigvalsh(exact_hessian(tiny, names, x, y, point))
        assert got["train_hess_max"][k] == pytest.approx(exact[-1], rel=1e-5)
        assert got["train_hess_min"][k] == pytest.approx(exact[0], rel=1e-5, abs=1e-6)
    # the warm start from the neighbouring point saves products
    assert got["train_hess_products"][1:].mean() < got["train_hess_products"][0]
    # the loss and accuracy are those of the plain evaluator, and θ0 is where it was
    plain = SurfaceEvaluator(tiny.model(), directions, (x, y), cross_entropy, 64, vmap="off").evaluate(offsets)
    np.testing.assert_array_equal(got["train_loss"], plain["train_loss"])
    for name, tensor in inner.model.state_dict().items():
        assert torch.equal(tensor, tiny.model().state_dict()[name]), name


def test_dsurf_hessian_writes_and_draws_the_spectrum(tiny, dsurf, run_args, tmp_path):
    args = ["hessian", *run_args[1:], "--top-k", "3", "--trace-probes", "8", "--density-probes", "2", "--lanczos-steps", "20",
            "--hessian-tol", "1e-8", "--out", "h.h5"]  # fmt: skip
    rc, out, err = dsurf(*args)
    assert rc == 0, err
    spectrum = read_spectrum(str(tmp_path / "h.h5"))
    model = tiny.model()
    names = hessian_parameters(model, "weights")
    exact = np.linalg.eigvalsh(exact_hessian(tiny, names, *tiny.data()))
    np.testing.assert_allclose(spectrum.eigenvalues, exact[::-1][:3], rtol=1e-6)
    assert spectrum.min_eigenvalue == pytest.approx(exact[0], rel=1e-6)
    vectors = read_eigenvectors(str(tmp_path / "h.h5"))
    assert set(vectors) == set(names) and vectors[names[0]].shape == (3, *model.get_parameter(names[0]).shape)
    rc, out, err = dsurf("info", "h.h5")
    assert rc == 0 and "top eigenvalues" in out and "trace" in out
    rc, out, err = dsurf("plot", "h.h5")
    assert rc == 0 and out.strip().endswith("h_density.png"), err
    rc, out, err = dsurf(*args)  # an existing file needs --overwrite
    assert_one_line_error(rc, out, err, "exists", "--overwrite")


def test_hessian_directions_are_the_normalised_top_eigenvectors(tiny, dsurf, run_args, tmp_path):
    rc, out, err = dsurf(*run_args, "--directions", "hessian", "--hessian-tol", "1e-8", "--x", "-1:1:3", "--y", "-1:1:3",
                         "--out", "s.h5")  # fmt: skip
    assert rc == 0, err
    model = tiny.model()
    names = hessian_parameters(model, "weights")
    hessian = exact_hessian(tiny, names, *tiny.data())
    values, vectors = np.linalg.eigh(hessian)
    base = {n: t.cpu() for n, t in base_tensors(model, "weights").items()}
    with open_checked(str(tmp_path / "s.h5")) as f:
        stored = read_directions(f)
    sizes = [base[n].numel() for n in names]
    for k, direction in enumerate(stored):
        eigenvector = vectors[:, -1 - k]
        pieces = dict(zip(names, np.split(eigenvector, np.cumsum(sizes)[:-1])))
        expected = normalize_direction(
            {n: torch.from_numpy(pieces[n].reshape(base[n].shape)).float() if n in pieces else torch.zeros_like(t)
             for n, t in base.items()}, base, "filter", "biasbn")  # fmt: skip
        sign = np.sign(np.sum(direction[names[0]] * expected[names[0]].numpy()))
        for name in names:
            np.testing.assert_allclose(direction[name], sign * expected[name].numpy(), atol=1e-4)
    assert read_surface(str(tmp_path / "s.h5")).frame["kind"] == "hessian"


@pytest.mark.parametrize(
    "flags,needles",
    [
        (["--top-k", "0"], ["--top-k", "at least 1"]),
        (["--top-k", "100000"], ["--top-k", "between 1 and"]),
        (["--hessian-samples", "0"], ["--hessian-samples", "at least 1"]),
        (["--loss", "TINY:argmax_loss"], ["cannot be differentiated twice"]),
        (["--model", "TINY:vector_model", "--data", "TINY:data"], ["no parameter with more than one dimension"]),
    ],
)
def test_bad_hessian_input(tiny, dsurf, run_args, tmp_path, flags, needles):
    (tmp_path / "extra.py").write_text('''
import torch
from torch import nn


def argmax_loss(outputs, targets):
    return (outputs.argmax(dim=1) != targets).float()


class Scales(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return x.flatten(1)[:, :3] * self.scale


def vector_model():
    return Scales()
''')
    flags = [f.replace("TINY:", f"{tmp_path / 'extra.py'}:") if "loss" in f or "vector" in f else f.replace("TINY:", f"{tiny.path}:")
             for f in flags]  # fmt: skip
    args = [a for a in run_args[1:] if a not in ("--no-plot", "--no-progress")]
    if "--model" in flags:
        args = []
    rc, out, err = dsurf("hessian", *args, *flags, "--no-plot", "--out", "h.h5")
    assert_one_line_error(rc, out, err, *needles)
    assert not (tmp_path / "h.h5").exists()


def run_map(tmp_path, run_args, out, ranks=None, extra_env=None, **popen):
    command = [sys.executable, "-m", "distributed_surface", *run_args, "--measure", "hessian", "--hessian-tol", "1e-9",
               "--x", "-0.4:0.4:3", "--y", "-0.4:0.4:3", "--chunk-size", "3", "--out", out]  # fmt: skip
    if ranks:
        command = [MPIRUN, "--oversubscribe", "-np", str(ranks), *command]
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", **(extra_env or {}))
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, **popen)


@pytest.mark.mpi
@pytest.mark.skipif(MPIRUN is None, reason="mpirun is not installed")
def test_curvature_maps_under_mpirun_and_resumed_equal_the_serial_one(tiny, run_args, tmp_path):
    serial = run_map(tmp_path, run_args, "serial.h5")
    assert serial.returncode == 0, serial.stderr
    reference = read_surface(str(tmp_path / "serial.h5"))
    for ranks in (1, 2, 3):
        result = run_map(tmp_path, run_args, f"mpi{ranks}.h5", ranks=ranks)
        assert result.returncode == 0, result.stderr
        got = read_surface(str(tmp_path / f"mpi{ranks}.h5"))
        for name in ("train_hess_max", "train_hess_min"):  # to the solver's tolerance
            np.testing.assert_allclose(got.metrics[name], reference.metrics[name], rtol=1e-6, atol=1e-7, err_msg=name)
    # a file whose last two chunks are not done (as an interrupted run leaves it) resumes to the same map
    partial = tmp_path / "partial.h5"
    shutil.copy(tmp_path / "serial.h5", partial)
    data = read_surface(str(partial))
    with open_checked(str(partial), "r+") as f:
        done = f["done"][()]
        done.reshape(-1)[3:] = 0
        f["done"][...] = done
    resumed = subprocess.run([sys.executable, "-m", "distributed_surface", *run_args, "--measure", "hessian",
                              "--hessian-tol", "1e-9", "--x", "-0.4:0.4:3", "--y", "-0.4:0.4:3", "--chunk-size", "3",
                              "--out", "partial.h5", "--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    final = read_surface(str(partial))
    np.testing.assert_allclose(final.metrics["train_hess_max"], reference.metrics["train_hess_max"], rtol=1e-6)
    np.testing.assert_allclose(final.metrics["train_hess_min"], reference.metrics["train_hess_min"], rtol=1e-6, atol=1e-7)
    assert (final.point_runs.reshape(-1)[3:] == 1).all() and (final.point_runs.reshape(-1)[:3] == 0).all()
    assert data.metrics["train_hess_products"].min() > 0


@pytest.mark.mpi
@pytest.mark.skipif(MPIRUN is None, reason="mpirun is not installed")
def test_dsurf_hessian_under_mpirun_splits_the_data(tiny, run_args, tmp_path):
    args = [sys.executable, "-m", "distributed_surface", "hessian", *run_args[1:], "--top-k", "2", "--trace-probes", "4",
            "--density-probes", "1", "--lanczos-steps", "10", "--hessian-tol", "1e-9", "--batch-size", "16"]  # fmt: skip
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    serial = subprocess.run([*args, "--out", "s.h5"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert serial.returncode == 0, serial.stderr
    mpi = subprocess.run([MPIRUN, "--oversubscribe", "-np", "3", *args, "--out", "m.h5"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert mpi.returncode == 0, mpi.stderr
    a, b = read_spectrum(str(tmp_path / "s.h5")), read_spectrum(str(tmp_path / "m.h5"))
    np.testing.assert_allclose(b.eigenvalues, a.eigenvalues, rtol=1e-6)
    assert b.attrs["ranks"] == 3 and b.trace == pytest.approx(a.trace, rel=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_per_point_eigenvalues_on_the_gpu_equal_the_cpu(tiny):
    """The products on the GPU (float64 sums of float32 batches) give the CPU's eigenvalues."""
    x, y = tiny.data()
    directions = make_directions(base_tensors(tiny.model(), "weights"), 2, "filter", "biasbn", 0)
    offsets = np.array([[0.0, 0.0], [0.1, 0.0], [0.2, 0.05]])
    values = {}
    for device in ("cpu", "cuda"):
        inner = SurfaceEvaluator(tiny.model(), directions, (x, y), cross_entropy, 64, device=device, vmap="off")
        values[device] = CurvatureEvaluator(inner, tol=1e-8).evaluate(offsets)
    for name in ("train_hess_max", "train_hess_min", "train_loss"):
        np.testing.assert_allclose(values["cuda"][name], values["cpu"][name], rtol=1e-4, atol=1e-6, err_msg=name)


ONCE_DIFFERENTIABLE = '''
import torch
from torch import nn
from torch.autograd.function import once_differentiable


class TanhOnce(torch.autograd.Function):
    """tanh with a backward that autograd cannot differentiate again (as many fused kernels)."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)


class MLP(nn.Module):
    def __init__(self, once):
        super().__init__()
        torch.manual_seed(3)
        self.hidden, self.out, self.once = nn.Linear(36, 8), nn.Linear(8, 3), once

    def forward(self, x):
        h = self.hidden(x.flatten(1))
        return self.out(TanhOnce.apply(h) if self.once else torch.tanh(h))


def once_model():
    return MLP(True)


def tanh_model():
    return MLP(False)
'''


@pytest.mark.parametrize("command", ["hessian", "measure", "directions"])
def test_a_function_without_a_second_derivative_is_refused(tiny, dsurf, tmp_path, command):
    """The product through a @once_differentiable function raises nothing and drops its term: a wrong
    Hessian with exit 0. The walk of the first gradient's graph finds it first."""
    (tmp_path / "once.py").write_text(ONCE_DIFFERENTIABLE)
    problem = ["--data", tiny.spec("data"), "--no-plot", "--out", "h.h5"]
    args = {"hessian": ["hessian", *problem], "measure": ["run", *problem, "--measure", "hessian", "--x", "-1:1:3"],
            "directions": ["run", *problem, "--directions", "hessian", "--x", "-1:1:2", "--y", "-1:1:2"]}[command]  # fmt: skip
    rc, out, err = dsurf(*args, "--model", "once.py:once_model")
    assert_one_line_error(rc, out, err, "TanhOnce", "once_differentiable")
    assert not (tmp_path / "h.h5").exists()
    # the same network with torch's own tanh has a second derivative: accepted
    rc, out, err = dsurf(*args, "--model", "once.py:tanh_model", "--no-progress")
    assert rc == 0, err


@pytest.mark.mpi
@pytest.mark.skipif(MPIRUN is None, reason="mpirun is not installed")
def test_a_function_without_a_second_derivative_is_refused_under_mpirun(tiny, tmp_path):
    (tmp_path / "once.py").write_text(ONCE_DIFFERENTIABLE)
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    done = subprocess.run([MPIRUN, "--oversubscribe", "-np", "2", sys.executable, "-m", "distributed_surface", "hessian",
                           "--model", "once.py:once_model", "--data", tiny.spec("data"), "--out", "h.h5"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("dsurf: error:")]
    assert len(errors) == 1 and "TanhOnce" in errors[0] and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "h.h5").exists()
