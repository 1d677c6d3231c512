"""The evaluator: bitwise restore, values against an independent float64 evaluation, conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distributed_surface.core.directions import base_tensors, make_directions
from distributed_surface.core.evaluate import SurfaceEvaluator
from distributed_surface.core.losses import cross_entropy, mse
from helpers import reference_point

OFFSETS_2D = np.array([[0.0, 0.0], [0.3, -0.2], [-1.0, 0.5], [0.7, 0.9]])


def evaluator_for(
    tiny,
    *,
    dir_type="weights",
    batch_size=16,
    ndirs=2,
    loss=cross_entropy,
    data=None,
    norm="filter",
    ignore="biasbn",
    seed=0,
    model=None,
):
    model = model if model is not None else tiny.model()
    inputs, targets = data if data is not None else tiny.data()
    directions = make_directions(base_tensors(model, dir_type), ndirs, norm, ignore, seed)
    ev = SurfaceEvaluator(model, directions, (inputs, targets), loss, batch_size=batch_size, dir_type=dir_type)
    return ev, model, directions, inputs, targets


@pytest.mark.parametrize("dir_type,ignore", [("weights", "biasbn"), ("states", "none")])
def test_perturb_then_restore_is_bitwise(tiny, dir_type, ignore):
    ev, model, *_ = evaluator_for(tiny, dir_type=dir_type, ignore=ignore)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ev.evaluate(OFFSETS_2D)
    after = model.state_dict()
    assert set(after) == set(before)
    for k, v in after.items():
        assert v.dtype == before[k].dtype
        assert torch.equal(v, before[k]), k
    # and the evaluation really moved the model: the points differ
    values = ev.evaluate(OFFSETS_2D)["train_loss"]
    assert len(set(values.tolist())) == len(values)


def test_restore_after_an_exception_mid_chunk(tiny):
    ev, model, *_ = evaluator_for(tiny)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = {"n": 0}
    real_forward = model.forward

    def failing(x):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_forward(x)

    model.forward = failing
    with pytest.raises(KeyboardInterrupt):
        ev.evaluate(OFFSETS_2D)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize(
    "dir_type,ignore,norm",
    [("weights", "biasbn", "filter"), ("weights", "none", "layer"), ("states", "none", "filter")],
)
def test_values_agree_with_independent_float64_evaluation(tiny, dir_type, ignore, norm):
    ev, model, directions, inputs, targets = evaluator_for(tiny, dir_type=dir_type, ignore=ignore, norm=norm)
    theta0_model = tiny.model()  # an untouched copy of θ0
    got = ev.evaluate(OFFSETS_2D)
    assert set(got) == {"train_loss", "train_acc"}
    assert got["train_loss"].dtype == np.float64 and got["train_loss"].shape == (len(OFFSETS_2D),)
    for k, offset in enumerate(OFFSETS_2D):
        loss, acc = reference_point(theta0_model, directions, inputs, targets, offset, dir_type)
        assert got["train_loss"][k] == pytest.approx(loss, rel=1e-6)
        assert got["train_acc"][k] == pytest.approx(acc, abs=1e-9)


def test_float64_model_agrees_to_1e12(tiny):
    inputs, targets = tiny.data64()
    ev, model, directions, *_ = evaluator_for(tiny, model=tiny.model64(), data=(inputs, targets))
    got = ev.evaluate(OFFSETS_2D)
    for k, offset in enumerate(OFFSETS_2D):
        loss, acc = reference_point(tiny.model64(), directions, inputs, targets, offset)
        assert got["train_loss"][k] == pytest.approx(loss, rel=1e-12)
        assert got["train_acc"][k] == acc


def test_accuracy_is_percent(tiny):
    ev, model, directions, inputs, targets = evaluator_for(tiny)
    acc = ev.evaluate(OFFSETS_2D)["train_acc"]
    assert np.all((acc >= 0) & (acc <= 100))
    # exactly hits/N*100, a multiple of 100/64
    np.testing.assert_allclose(acc * len(inputs) / 100, np.round(acc * len(inputs) / 100), atol=1e-9)
    with torch.no_grad():
        plain = 100.0 * (tiny.model().eval()(inputs).argmax(1) == targets).sum().item() / len(inputs)
    assert acc[0] == pytest.approx(plain)
    assert plain > 1.0  # percent, not a fraction


def test_loss_at_origin_is_the_plain_models_loss(tiny):
    inputs, targets = tiny.data()
    with torch.no_grad():
        plain = F.cross_entropy(tiny.model().eval()(inputs), targets).item()
    for batch_size in (7, 64, 1000):
        ev, *_ = evaluator_for(tiny, batch_size=batch_size)
        assert ev.evaluate(np.zeros((1, 2)))["train_loss"][0] == pytest.approx(plain, rel=1e-6)
    ev1, *_ = evaluator_for(tiny, ndirs=1)
    assert ev1.evaluate(np.zeros((1, 1)))["train_loss"][0] == pytest.approx(plain, rel=1e-6)


def test_batch_size_does_not_change_results(tiny):
    results = [evaluator_for(tiny, batch_size=b)[0].evaluate(OFFSETS_2D) for b in (1, 5, 64, 500)]
    for other in results[1:]:
        np.testing.assert_allclose(other["train_loss"], results[0]["train_loss"], rtol=1e-6, atol=0)
        np.testing.assert_array_equal(other["train_acc"], results[0]["train_acc"])


def test_the_whole_data_set_is_averaged(tiny):
    """Not just the first batch: a batch size that does not divide N still counts every sample."""
    inputs, targets = tiny.data()
    ev, *_ = evaluator_for(tiny, batch_size=10)
    with torch.no_grad():
        per_sample = F.cross_entropy(tiny.model().eval()(inputs), targets, reduction="none").double()
    assert ev.evaluate(np.zeros((1, 2)))["train_loss"][0] == pytest.approx(per_sample.mean().item(), rel=1e-6)
    assert ev.num_samples == len(inputs) == 64


def test_mse_with_class_labels_follows_the_paper(tiny):
    inputs, targets = tiny.data()
    ev, model, directions, *_ = evaluator_for(tiny, loss=mse)
    assert [m.name for m in ev.measurements] == ["train_loss", "train_acc"]
    with torch.no_grad():
        out = tiny.model().eval()(inputs).double()
    # the paper: nn.MSELoss()(F.softmax(outputs), one_hot) -- a mean over samples AND classes
    expected = F.mse_loss(F.softmax(out, dim=1), F.one_hot(targets, 3).double()).item()
    assert ev.evaluate(np.zeros((1, 2)))["train_loss"][0] == pytest.approx(expected, rel=1e-6)
    # per sample: the mean over classes, summed over the samples
    loss_sum, hits = mse.sums(out.unsqueeze(0), targets, True)
    per_sample = ((F.softmax(out, 1) - F.one_hot(targets, 3)) ** 2).mean(1)
    assert loss_sum.item() == pytest.approx(per_sample.sum().item(), rel=1e-12)
    assert hits.item() == (out.argmax(1) == targets).sum().item()


def test_mse_with_float_targets_is_plain_mse_without_accuracy(tiny):
    inputs, targets = tiny.regression_data()
    ev, model, directions, *_ = evaluator_for(tiny, loss=mse, data=(inputs, targets))
    assert [m.name for m in ev.measurements] == ["train_loss"]
    got = ev.evaluate(OFFSETS_2D)
    assert set(got) == {"train_loss"}
    with torch.no_grad():
        expected = F.mse_loss(tiny.model().eval()(inputs).double(), targets.double()).item()
    assert got["train_loss"][0] == pytest.approx(expected, rel=1e-6)


def test_scalar_mean_loss_counts_like_per_sample_loss(tiny):
    """A user loss that returns the batch mean gives the same surface as a per-sample one, whatever the
    batch size (the last, shorter batch is weighted by its size)."""
    per_sample, *_ = evaluator_for(tiny, batch_size=10)
    mean, *_ = evaluator_for(tiny, batch_size=10, loss=tiny.mean_cross_entropy)
    np.testing.assert_allclose(
        mean.evaluate(OFFSETS_2D)["train_loss"], per_sample.evaluate(OFFSETS_2D)["train_loss"], rtol=1e-6
    )


def test_accuracy_is_nan_where_the_loss_is_not_finite(tiny):
    ev, *_ = evaluator_for(tiny)
    got = ev.evaluate(np.array([[0.0, 0.0], [1e38, 1e38]]))
    assert np.isfinite(got["train_acc"][0]) and not np.isfinite(got["train_loss"][1])
    assert np.isnan(got["train_acc"][1])


def test_wrong_number_of_offsets_rejected(tiny):
    ev, *_ = evaluator_for(tiny, ndirs=2)
    with pytest.raises(ValueError, match="2 directions"):
        ev.evaluate(np.zeros((3, 1)))
