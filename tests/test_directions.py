"""Direction semantics (docs/directions.md, "Random directions"): the paper's, exactly."""

from __future__ import annotations

import pytest
import torch

from distributed_surface.core.directions import (
    base_tensors,
    make_directions,
    normalize_direction,
    random_direction,
)


def draw(base, seed=0):
    """The raw N(0, 1) draw that make_directions starts from."""
    return random_direction(base, torch.Generator().manual_seed(seed))


@pytest.fixture
def net(tiny):
    return tiny.model()


def test_filter_norm_matches_theta0_slice_by_slice(net):
    base = base_tensors(net, "weights")
    (d,) = make_directions(base, 1, "filter", "biasbn", seed=3)
    assert set(d) == set(base)
    multi = [name for name, t in base.items() if t.dim() > 1]
    assert len(multi) == 2  # conv kernel and linear weight
    for name in multi:
        assert d[name].shape == base[name].shape
        for k in range(base[name].shape[0]):
            torch.testing.assert_close(d[name][k].norm(), base[name][k].norm(), rtol=1e-5, atol=0)
        # a slice is rescaled, not replaced: same direction as the raw draw's slice
        raw = draw(base, 3)[name]
        for k in range(base[name].shape[0]):
            cos = torch.nn.functional.cosine_similarity(raw[k].flatten(), d[name][k].flatten(), dim=0)
            assert cos.item() == pytest.approx(1.0, abs=1e-6)


def test_layer_norm_matches_theta0_tensor_norm(net):
    base = base_tensors(net, "weights")
    (d,) = make_directions(base, 1, "layer", "biasbn", seed=3)
    for name, t in base.items():
        if t.dim() > 1:
            torch.testing.assert_close(d[name].norm(), t.norm(), rtol=1e-5, atol=0)
            # the whole tensor is rescaled by one factor, so slice norms are generally NOT θ0's
            ratios = d[name].flatten(1).norm(dim=1) / t.flatten(1).norm(dim=1)
            assert not torch.allclose(ratios, torch.ones_like(ratios), rtol=1e-3)


def test_weight_norm_is_theta0_times_draw(net):
    base = base_tensors(net, "weights")
    (d,) = make_directions(base, 1, "weight", "biasbn", seed=4)
    raw = draw(base, 4)
    for name, t in base.items():
        if t.dim() > 1:
            torch.testing.assert_close(d[name], raw[name] * t, rtol=0, atol=0)


def test_none_norm_is_the_raw_draw(net):
    base = base_tensors(net, "weights")
    (d,) = make_directions(base, 1, "none", "biasbn", seed=5)
    raw = draw(base, 5)
    for name, t in base.items():
        if t.dim() > 1:
            assert torch.equal(d[name], raw[name])
    # and the raw draw is N(0, 1) from torch.randn with the seed, in named_parameters() order
    g = torch.Generator().manual_seed(5)
    for name, t in base.items():
        assert torch.equal(raw[name], torch.randn(tuple(t.shape), generator=g))


@pytest.mark.parametrize("norm", ["filter", "layer", "weight", "none"])
def test_one_dimensional_params_zero_under_biasbn_and_theta0_under_none(net, norm):
    base = base_tensors(net, "weights")
    one_d = [name for name, t in base.items() if t.dim() <= 1]
    assert {"0.bias", "1.weight", "1.bias", "5.bias"} <= set(one_d)
    (ignored,) = make_directions(base, 1, norm, "biasbn", seed=0)
    (kept,) = make_directions(base, 1, norm, "none", seed=0)
    for name in one_d:
        assert torch.count_nonzero(ignored[name]) == 0, name
        assert torch.equal(kept[name], base[name]), name
    # the rule for >1-D tensors does not depend on ignore
    for name, t in base.items():
        if t.dim() > 1:
            assert torch.equal(ignored[name], kept[name])


def test_states_cover_batchnorm_buffers_and_integer_buffers_stay_zero(net):
    base = base_tensors(net, "states")
    assert set(base) == set(net.state_dict())
    assert {"1.running_mean", "1.running_var", "1.num_batches_tracked"} <= set(base)
    for ignore in ("biasbn", "none"):
        d1, d2 = make_directions(base, 2, "filter", ignore, seed=0)
        for d in (d1, d2):
            assert set(d) == set(base)
            nbt = d["1.num_batches_tracked"]
            assert not nbt.is_floating_point() and torch.count_nonzero(nbt) == 0
            if ignore == "none":  # running statistics are 1-D: they follow θ0 under ignore=none
                assert torch.equal(d["1.running_mean"], base["1.running_mean"])
                assert torch.equal(d["1.running_var"], base["1.running_var"])
            else:
                assert torch.count_nonzero(d["1.running_var"]) == 0


def test_weights_dir_type_leaves_out_buffers(net):
    base = base_tensors(net, "weights")
    assert "1.running_mean" not in base and "1.num_batches_tracked" not in base
    assert set(base) == {name for name, _ in net.named_parameters()}


def test_same_seed_same_directions_other_seed_other_directions(net):
    base = base_tensors(net, "weights")
    a = make_directions(base, 2, "filter", "biasbn", seed=11)
    b = make_directions(base, 2, "filter", "biasbn", seed=11)
    c = make_directions(base, 2, "filter", "biasbn", seed=12)
    for da, db, dc in zip(a, b, c):
        for name in base:
            assert torch.equal(da[name], db[name])
        assert any(not torch.equal(da[name], dc[name]) for name in base)
    # and the two directions of one draw differ
    assert not torch.equal(a[0]["0.weight"], a[1]["0.weight"])


def test_first_of_two_directions_equals_the_single_direction(net):
    base = base_tensors(net, "weights")
    (single,) = make_directions(base, 1, "filter", "biasbn", seed=21)
    first, _ = make_directions(base, 2, "filter", "biasbn", seed=21)
    for name in base:
        assert torch.equal(single[name], first[name])


def test_directions_do_not_touch_theta0(net):
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for dir_type in ("weights", "states"):
        make_directions(base_tensors(net, dir_type), 2, "weight", "none", seed=0)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])


def test_unknown_norm_and_ignore_rejected(net):
    base = base_tensors(net, "weights")
    with pytest.raises(ValueError, match="norm"):
        normalize_direction(draw(base), base, "spectral", "biasbn")
    with pytest.raises(ValueError, match="ignore"):
        normalize_direction(draw(base), base, "filter", "bn")
    with pytest.raises(ValueError, match="direction type"):
        base_tensors(net, "buffers")
