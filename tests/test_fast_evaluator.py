"""The fast evaluator: K points per pass with vmap against one point per pass, streaming against resident
data, lower precisions against fp32, the fallback for models vmap cannot run, and θ0 restored bitwise."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from distributed_surface.core.directions import base_tensors, make_directions
from distributed_surface.core.evaluate import SurfaceEvaluator
from distributed_surface.core.losses import cross_entropy, mse
from distributed_surface.core.options import PRECISIONS
from distributed_surface.core.plan import CPU_MAX_BATCH
from distributed_surface.core.precision import PRECISION_LOSS_ERROR

N, CLASSES = 50, 4  # 50 samples: batches of 16 leave a short last batch


def cnn() -> nn.Module:
    """A small CNN with two BatchNorm layers with non-trivial running statistics."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        net = nn.Sequential(
            nn.Conv2d(2, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * 4 * 4, CLASSES),
        )
        for bn in (net[1], net[4]):
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.normal_(0, 0.2)
            bn.running_mean.normal_(0, 0.3)
            bn.running_var.uniform_(0.5, 2.0)
            bn.num_batches_tracked.fill_(11)
    return net


def data(n: int = N) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(8)
    return torch.randn(n, 2, 8, 8, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


class DataDependent(nn.Module):
    """Python control flow on a tensor's value: vmap cannot run it."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(4)
            self.conv = nn.Conv2d(2, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 8 * 8, CLASSES)

    def forward(self, x):
        h = self.conv(x)
        if h.mean() > 0:  # data-dependent
            h = h.relu()
        return self.fc(h.flatten(1))


class CallsItem(DataDependent):
    def forward(self, x):
        scale = float(self.conv.weight.abs().max().item())  # a host value mid-forward
        return self.fc(self.conv(x).flatten(1) / scale)


def make(model=None, *, dir_type="weights", ignore="biasbn", ndirs=2, loss=cross_entropy, inputs=None, **settings):
    model = model if model is not None else cnn()
    x, y = inputs if inputs is not None else data()
    directions = make_directions(base_tensors(model, dir_type), ndirs, "filter", ignore, 0)
    settings.setdefault("batch_size", 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning where vmap works
        ev = SurfaceEvaluator(model, directions, (x, y), loss, dir_type=dir_type, **settings)
        ev.plan
    return ev, model


def offsets(ndirs: int, count: int = 7) -> np.ndarray:
    g = np.random.default_rng(ndirs * 100 + count)
    points = g.uniform(-1, 1, size=(count, ndirs))
    points[0] = 0.0
    return points


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_bitwise_equal(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert set(after) == set(before)
    for name, tensor in after.items():
        assert tensor.dtype == before[name].dtype, name
        assert torch.equal(tensor, before[name]), name


@pytest.mark.parametrize("ndirs", [1, 2])
@pytest.mark.parametrize("dir_type,ignore", [("weights", "biasbn"), ("weights", "none"), ("states", "none")])
def test_vmap_equals_plain(dir_type, ignore, ndirs):
    plain, _ = make(dir_type=dir_type, ignore=ignore, ndirs=ndirs, vmap="off")
    fast, _ = make(dir_type=dir_type, ignore=ignore, ndirs=ndirs, vmap="on", points_per_pass=4)
    assert plain.plan.path == "plain" and fast.plan.path == "vmap"
    points = offsets(ndirs)
    want, got = plain.evaluate(points), fast.evaluate(points)
    assert set(got) == {"train_loss", "train_acc"}
    np.testing.assert_allclose(got["train_loss"], want["train_loss"], rtol=1e-6, atol=0)
    np.testing.assert_array_equal(got["train_acc"], want["train_acc"])
    assert len(set(want["train_loss"].tolist())) == len(points)  # the points really differ


def test_states_directions_move_the_batchnorm_statistics():
    """Under dir_type=states vmap batches the running statistics too: moving only them changes the loss."""
    model = cnn()
    base = base_tensors(model, "states")
    direction = {k: torch.zeros_like(v) for k, v in base.items()}
    direction["1.running_mean"] = torch.full_like(base["1.running_mean"], 0.5)
    x, y = data()
    fast = SurfaceEvaluator(model, [direction], (x, y), cross_entropy, 16, dir_type="states", vmap="on", points_per_pass=3)
    plain = SurfaceEvaluator(cnn(), [direction], (x, y), cross_entropy, 16, dir_type="states", vmap="off")
    points = np.array([[0.0], [1.0], [-2.0]])
    got = fast.evaluate(points)["train_loss"]
    np.testing.assert_allclose(got, plain.evaluate(points)["train_loss"], rtol=1e-6)
    assert got[0] != got[1] != got[2]


@pytest.mark.parametrize("k", [3, 7, 16])  # smaller than, equal to and larger than the chunk of 7
def test_points_per_pass_smaller_equal_larger_than_the_chunk(k):
    plain, _ = make(vmap="off")
    fast, _ = make(vmap="on", points_per_pass=k)
    points = offsets(2, 7)
    np.testing.assert_allclose(fast.evaluate(points)["train_loss"], plain.evaluate(points)["train_loss"], rtol=1e-6, atol=0)
    # a chunk of one point, and of none
    np.testing.assert_allclose(fast.evaluate(points[3:4])["train_loss"], plain.evaluate(points[3:4])["train_loss"], rtol=1e-6)
    assert fast.evaluate(np.zeros((0, 2)))["train_loss"].shape == (0,)


def test_batch_size_and_automatic_plan_do_not_change_values():
    reference, _ = make(vmap="off", batch_size=N)
    want = reference.evaluate(offsets(2))["train_loss"]
    for settings in ({"batch_size": None}, {"batch_size": 7, "vmap": "on", "points_per_pass": 5}, {"batch_size": None, "vmap": "tune"}):
        ev, _ = make(**settings)
        np.testing.assert_allclose(ev.evaluate(offsets(2))["train_loss"], want, rtol=1e-6, err_msg=str(settings))
        assert ev.plan.reason
        assert 1 <= ev.plan.batch_size <= N


def test_tuned_plan_is_timed_and_recorded():
    ev, _ = make(batch_size=None, vmap="tune")
    plan = ev.plan
    assert plan.path in ("plain", "vmap") and "timed" in plan.reason and "plain" in plan.reason
    assert plan.as_dict()["resident"] is True


def test_automatic_plan_uses_vmap_where_a_pass_is_overhead_bound():
    """auto decides from the counted FLOPs, not from timings: the same plan on every rank and run."""
    small, _ = make(batch_size=None)
    assert small.plan.path == "vmap" and "overhead-bound" in small.plan.reason
    assert small.plan.points_per_pass == 64 and small.plan.batch_size == N  # K: as many as fit, at most 64
    big_inputs = torch.randn(400, 2, 64, 64, generator=torch.Generator().manual_seed(1)), torch.randint(0, CLASSES, (400,))
    big = nn.Sequential(nn.Conv2d(2, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(32, CLASSES))  # fmt: skip
    heavy, _ = make(big, batch_size=None, inputs=big_inputs)
    assert heavy.plan.path == "plain" and "compute-bound" in heavy.plan.reason
    again, _ = make(batch_size=None)
    assert again.plan == small.plan


def test_automatic_plan_on_a_cpu_needs_no_forward_pass_beyond_the_probe():
    """Planning one point per pass on a CPU reuses the probe's profile: a model that counts its calls
    sees one call at construction and then one per point and batch (tests/test_mpi.py relies on it)."""
    calls = {"n": 0}
    x, y = data(200)
    big = nn.Sequential(nn.Conv2d(2, 64, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 64, CLASSES))
    real = big.forward

    def counting(inputs):
        calls["n"] += 1
        return real(inputs)

    big.forward = counting
    directions = make_directions(base_tensors(big, "weights"), 2, "filter", "biasbn", 0)
    ev = SurfaceEvaluator(big, directions, (x, y), cross_entropy, None)
    assert calls["n"] == 1
    ev.evaluate(offsets(2, 2))
    assert ev.plan.path == "plain" and ev.plan.batch_size == 100  # CPU_MAX_BATCH splits 200 in two
    assert calls["n"] == 1 + 2 * 2


@pytest.mark.parametrize("vmap", ["on", "off"])
@pytest.mark.parametrize("dir_type,ignore", [("weights", "biasbn"), ("states", "none")])
def test_theta0_restored_bitwise(vmap, dir_type, ignore):
    model = cnn()
    before = state_of(model)
    ev, _ = make(model, dir_type=dir_type, ignore=ignore, vmap=vmap, points_per_pass=None if vmap == "off" else 3)
    ev.evaluate(offsets(2))
    assert_bitwise_equal(model, before)


@pytest.mark.parametrize("vmap", ["on", "off"])
def test_theta0_restored_after_an_interruption(vmap):
    model = cnn()
    before = state_of(model)
    ev, _ = make(model, vmap=vmap, points_per_pass=None if vmap == "off" else 3)
    calls = {"n": 0}
    real_forward = model.forward

    def failing(x):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_forward(x)

    model.forward = failing
    with pytest.raises(KeyboardInterrupt):
        ev.evaluate(offsets(2))
    assert_bitwise_equal(model, before)


@pytest.mark.parametrize("vmap", ["on", "off"])
@pytest.mark.parametrize("loss", [cross_entropy, mse])
def test_streamed_equals_resident(vmap, loss):
    k = None if vmap == "off" else 3
    resident, _ = make(vmap=vmap, points_per_pass=k, resident=True, loss=loss)
    streamed, _ = make(vmap=vmap, points_per_pass=k, resident=False, loss=loss)
    assert resident.resident and not streamed.resident
    points = offsets(2)
    want, got = resident.evaluate(points), streamed.evaluate(points)
    np.testing.assert_allclose(got["train_loss"], want["train_loss"], rtol=1e-12, atol=0)
    np.testing.assert_array_equal(got["train_acc"], want["train_acc"])


def test_streamed_plain_path_reads_each_batch_once_per_call(monkeypatch):
    ev, _ = make(vmap="off", resident=False)
    batches = []
    real = ev._batches

    def counting(*args, **kwargs):
        for batch in real(*args, **kwargs):
            batches.append(len(batch[2]))  # (first sample, inputs, targets)
            yield batch

    monkeypatch.setattr(ev, "_batches", counting)
    ev.evaluate(offsets(2, 5))
    assert batches == [16, 16, 16, 2]  # once, for all 5 points


def test_user_loss_returning_a_batch_mean_under_vmap(tiny):
    plain, _ = make(vmap="off", loss=tiny.mean_cross_entropy)
    fast, _ = make(vmap="on", points_per_pass=4, loss=tiny.mean_cross_entropy)
    np.testing.assert_allclose(fast.evaluate(offsets(2))["train_loss"], plain.evaluate(offsets(2))["train_loss"], rtol=1e-6)


def test_regression_outputs_under_vmap():
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 8 * 8, 16), nn.Tanh(), nn.Linear(16, 3))
    x, _ = data()
    y = torch.randn(N, 3, generator=torch.Generator().manual_seed(2))
    plain, _ = make(model, vmap="off", loss=mse, inputs=(x, y))
    fast, _ = make(model, vmap="on", points_per_pass=4, loss=mse, inputs=(x, y))
    assert [m.name for m in fast.measurements] == ["train_loss"]
    got = fast.evaluate(offsets(2))
    assert set(got) == {"train_loss"}
    np.testing.assert_allclose(got["train_loss"], plain.evaluate(offsets(2))["train_loss"], rtol=1e-6)


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("vmap", ["on", "off"])
def test_lower_precision_error_within_the_documented_bound(precision, vmap):
    k = None if vmap == "off" else 4
    exact, _ = make(vmap=vmap, points_per_pass=k)
    low, _ = make(vmap=vmap, points_per_pass=k, precision=precision)
    points = offsets(2)
    want, got = exact.evaluate(points)["train_loss"], low.evaluate(points)["train_loss"]
    error = np.max(np.abs(got - want) / np.abs(want))
    assert error <= PRECISION_LOSS_ERROR[precision]
    if precision == "bf16":
        assert error > 0  # it really ran in bfloat16
    assert PRECISION_LOSS_ERROR["fp32"] == 1e-6


@pytest.mark.parametrize("vmap", ["on", "off"])
def test_bf16_evaluates_each_point_not_the_first_ones_weights(vmap):
    """autocast caches the bfloat16 copy of a weight; the evaluator keeps the cache while a point's pass
    lasts and must not reuse it for the next point (it did, before the weights' moves cleared it: the
    losses of every point were the first point's)."""
    k = None if vmap == "off" else 2
    exact, _ = make(vmap=vmap, points_per_pass=k)
    low, _ = make(vmap=vmap, points_per_pass=k, precision="bf16")
    points = offsets(2)
    want, got = exact.evaluate(points)["train_loss"], low.evaluate(points)["train_loss"]
    assert np.max(np.abs(got - want) / want) < 1e-3


@pytest.mark.parametrize("model_class", [DataDependent, CallsItem])
def test_fallback_for_a_model_vmap_cannot_run(model_class):
    x, y = data()
    model = model_class()
    before = state_of(model)
    directions = make_directions(base_tensors(model, "weights"), 2, "filter", "biasbn", 0)
    ev = SurfaceEvaluator(model, directions, (x, y), cross_entropy, 16, vmap="auto")
    with pytest.warns(RuntimeWarning, match="vmap cannot run this model"):
        plan = ev.plan
    assert plan.path == "plain" and "vmap cannot run this model" in plan.reason
    reference = SurfaceEvaluator(model_class(), directions, (x, y), cross_entropy, 16, vmap="off")
    points = offsets(2)
    np.testing.assert_allclose(ev.evaluate(points)["train_loss"], reference.evaluate(points)["train_loss"], rtol=1e-12)
    assert_bitwise_equal(model, before)
    # vmap="on" falls back the same way rather than failing the run
    forced = SurfaceEvaluator(model_class(), directions, (x, y), cross_entropy, 16, vmap="on")
    with pytest.warns(RuntimeWarning, match="vmap cannot run"):
        assert forced.plan.path == "plain"


def test_fallback_when_vmap_gives_other_outputs(monkeypatch):
    ev, _ = make(vmap="off")
    x, y = data()
    model = cnn()
    directions = make_directions(base_tensors(model, "weights"), 2, "filter", "biasbn", 0)
    ev = SurfaceEvaluator(model, directions, (x, y), cross_entropy, 16, vmap="on")
    real = ev._forward_many
    monkeypatch.setattr(ev, "_forward_many", lambda tensors, x: real(tensors, x) * 1.01)
    with pytest.warns(RuntimeWarning, match="other outputs"):
        assert ev.plan.path == "plain"


def test_out_of_memory_halves_points_per_pass(monkeypatch):
    plain, _ = make(vmap="off")
    ev, _ = make(vmap="on", points_per_pass=8)
    real = ev._forward_many
    state = {"failed": False}

    def forward(tensors, x):
        k = next(iter(tensors.values())).shape[0]
        if k > 4 and not state["failed"]:
            state["failed"] = True
            raise torch.OutOfMemoryError("pretend")
        return real(tensors, x)

    monkeypatch.setattr(ev, "_forward_many", forward)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    got = ev.evaluate(offsets(2, 7))["train_loss"]
    assert ev.plan.points_per_pass == 4 and "halved" in ev.plan.reason
    np.testing.assert_allclose(got, plain.evaluate(offsets(2, 7))["train_loss"], rtol=1e-6)


def test_compile_failure_falls_back_to_eager(monkeypatch):
    def broken_compile(function, **kwargs):
        def call(*args):
            raise RuntimeError("no compiler here")

        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    plain, _ = make(vmap="off")
    x, y = data()
    model = cnn()
    directions = make_directions(base_tensors(model, "weights"), 2, "filter", "biasbn", 0)
    ev = SurfaceEvaluator(model, directions, (x, y), cross_entropy, 16, vmap="on", points_per_pass=4, compile=True)
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        got = ev.evaluate(offsets(2))["train_loss"]
    np.testing.assert_allclose(got, plain.evaluate(offsets(2))["train_loss"], rtol=1e-6)


@pytest.mark.parametrize("vmap", ["on", "off"])
def test_channels_last_gives_the_same_values(vmap):
    k = None if vmap == "off" else 4
    plain, _ = make(vmap="off")
    ev, model = make(vmap=vmap, points_per_pass=k, channels_last=True)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(ev.evaluate(offsets(2))["train_loss"], plain.evaluate(offsets(2))["train_loss"], rtol=1e-6)


class Views(nn.Module):
    """``.view`` of a 4-D activation: fails in channels-last."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(6)
            self.conv = nn.Conv2d(2, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 8 * 8, CLASSES)

    def forward(self, x):
        h = self.conv(x)
        return self.fc(h.view(h.shape[0], -1))


def test_channels_last_falls_back_for_a_model_that_fails_with_it():
    x, y = data()
    model = Views()
    before = state_of(model)
    directions = make_directions(base_tensors(model, "weights"), 2, "filter", "biasbn", 0)
    with pytest.warns(RuntimeWarning, match="channels-last off"):
        ev = SurfaceEvaluator(model, directions, (x, y), cross_entropy, 16, channels_last=True, vmap="off")
    reference = SurfaceEvaluator(Views(), directions, (x, y), cross_entropy, 16, vmap="off")
    np.testing.assert_allclose(ev.evaluate(offsets(2))["train_loss"], reference.evaluate(offsets(2))["train_loss"], rtol=1e-12)
    assert_bitwise_equal(model, before)
    assert model.conv.weight.is_contiguous()


def test_channels_last_by_default_on_a_cpu_only_where_the_model_takes_it(recwarn):
    x, y = data()
    ev, model = make(vmap="off")
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    plain, _ = make(vmap="off", channels_last=False)
    np.testing.assert_allclose(ev.evaluate(offsets(2))["train_loss"], plain.evaluate(offsets(2))["train_loss"], rtol=1e-6)
    views = Views()
    directions = make_directions(base_tensors(views, "weights"), 2, "filter", "biasbn", 0)
    SurfaceEvaluator(views, directions, (x, y), cross_entropy, 16, vmap="off")  # falls back without a word
    assert views.conv.weight.is_contiguous() and not [w for w in recwarn if "channels-last" in str(w.message)]


def test_float64_model_under_vmap_agrees_to_1e12():
    model = cnn().double()
    x, y = data()
    plain, _ = make(model, vmap="off", inputs=(x.double(), y))
    fast, _ = make(cnn().double(), vmap="on", points_per_pass=4, inputs=(x.double(), y))
    np.testing.assert_allclose(fast.evaluate(offsets(2))["train_loss"], plain.evaluate(offsets(2))["train_loss"], rtol=1e-12)


@pytest.mark.parametrize(
    "settings,match",
    [
        ({"vmap": "sometimes"}, "vmap mode"),
        ({"precision": "fp8"}, "precision"),
        ({"points_per_pass": 0}, "points per pass"),
        ({"batch_size": 0}, "batch size"),
    ],
)
def test_bad_settings_rejected(settings, match):
    with pytest.raises(ValueError, match=match):
        make(**settings)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("resident", [True, False])
def test_gpu_vmap_and_streaming_equal_cpu(resident):
    cpu, _ = make(vmap="off")
    gpu, model = make(vmap="on", points_per_pass=4, device="cuda", resident=resident)
    before = state_of(model)
    np.testing.assert_allclose(gpu.evaluate(offsets(2))["train_loss"], cpu.evaluate(offsets(2))["train_loss"], rtol=1e-5)
    assert_bitwise_equal(model, before)
    auto, _ = make(device="cuda", batch_size=None)
    np.testing.assert_allclose(auto.evaluate(offsets(2))["train_loss"], cpu.evaluate(offsets(2))["train_loss"], rtol=1e-5)
    for precision in ("tf32", "bf16"):
        low, _ = make(device="cuda", batch_size=None, precision=precision)
        want = cpu.evaluate(offsets(2))["train_loss"]
        assert np.max(np.abs(low.evaluate(offsets(2))["train_loss"] - want) / want) <= PRECISION_LOSS_ERROR[precision]


# -- the flags ----------------------------------------------------------------------------------------


def test_flags_reach_the_config_and_the_file(dsurf, run_args, tmp_path):
    import h5py
    import json

    rc, out, err = dsurf(
        *run_args, "--x", "-1:1:3", "--y", "-1:1:2", "--out", "s.h5", "--precision", "bf16", "--vmap", "on",
        "--points-per-pass", "4", "--compile=off", "--channels-last",
    )  # fmt: skip
    assert rc == 0, err
    with h5py.File(tmp_path / "s.h5", "r") as f:
        config = json.loads(f.attrs["config"])
    assert config["precision"] == "bf16" and config["vmap"] == "on" and config["points_per_pass"] == 4
    assert config["compile"] is False and config["channels_last"] is True and config["batch_size"] is None
    # precision decides the values: a resume in another precision is refused
    rc, out, err = dsurf(*run_args, "--x", "-1:1:3", "--y", "-1:1:2", "--out", "s.h5", "--resume")
    assert rc == 2 and "precision" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "flags,words",
    [
        (["--precision", "fp16"], ["--precision", "fp16"]),
        (["--vmap", "maybe"], ["--vmap"]),
        (["--points-per-pass", "0"], ["--points-per-pass"]),
        (["--compile=perhaps"], ["--compile"]),
    ],
)
def test_bad_speed_flags_one_line(dsurf, run_args, flags, words):
    rc, out, err = dsurf(*run_args, "--out", "bad.h5", *flags)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and all(w in err for w in words), err


def test_precision_error_bounds_are_what_the_docs_say():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "performance.md").read_text()
    for precision, bound in PRECISION_LOSS_ERROR.items():
        assert f"| {precision} | {bound:g} |" in page, precision
    assert PRECISIONS == tuple(PRECISION_LOSS_ERROR)


def test_channels_last_auto_on_the_command_line_and_in_toml(tmp_path):
    from distributed_surface.cli import build_parser
    from distributed_surface.config import load_toml

    from distributed_surface.cli import run_config

    parse = build_parser().parse_args
    assert parse(["run", "--channels-last=auto"]).channels_last == "auto"
    assert parse(["run", "--channels-last"]).channels_last is True
    assert parse(["run", "--channels-last=off"]).channels_last is False
    (tmp_path / "s.toml").write_text('channels-last = "auto"\ncompile = "off"\n')
    assert load_toml(str(tmp_path / "s.toml")) == {"channels_last": "auto", "compile": False}
    (tmp_path / "on.toml").write_text('channels-last = "on"\n')
    assert run_config(parse(["run", str(tmp_path / "on.toml")])).evaluation.channels_last is True
    # a flag overrides the file, "auto" included
    assert run_config(parse(["run", str(tmp_path / "on.toml"), "--channels-last=auto"])).evaluation.channels_last == "auto"


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_model_plans_without_hooks():
    """A scripted model takes no forward hooks, so it has no profile: it still plans (one point per
    pass, the CPU batch cap) and gives the eager model's values."""
    x, y = data()
    eager, _ = make(cnn(), batch_size=None, vmap="off")
    scripted_model = torch.jit.script(cnn())
    directions = make_directions(base_tensors(scripted_model, "weights"), 2, "filter", "biasbn", 0)
    scripted = SurfaceEvaluator(scripted_model, directions, (x, y), cross_entropy, vmap="off")
    assert scripted.plan.path == "plain" and scripted.plan.batch_size <= CPU_MAX_BATCH
    np.testing.assert_allclose(scripted.evaluate(offsets(2))["train_loss"], eager.evaluate(offsets(2))["train_loss"], rtol=1e-6)
