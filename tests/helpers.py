"""Helpers shared by the tests: the tiny problem module's source, one-line-error checks, reading a
surface file whole, and an independent float64 evaluation of a point."""

from __future__ import annotations

import copy
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F


# The built-in example's network slowed down per forward pass (one pass per point at --max-samples
# below the batch size), so that a signal or a kill lands while a run is under way. Its values are the
# example's. Write it with write_slow_model(); pass SLOW_ARGS to dsurf.
SLOW_ARGS = ["--model", "slow.py:model", "--data", "distributed_surface.example:digits_train_data"]
_SLOW_MODEL = """
import time
import torch
from distributed_surface.example import trained_digits_cnn


class Slow(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = trained_digits_cnn()

    def forward(self, x):
        time.sleep({seconds})
        return self.inner(x)


def model():
    return Slow()
"""


def write_slow_model(directory: Path, seconds: float) -> None:
    """``slow.py`` in ``directory``: the example network, ``seconds`` slower per forward pass."""
    (Path(directory) / "slow.py").write_text(_SLOW_MODEL.format(seconds=seconds))


NUM_SAMPLES = 64
NUM_CLASSES = 3

# The module a user would write. Every factory is deterministic (its own seeded RNG, the global one
# untouched), because a resumed run checks that the model gives the same θ0.
TINY_MODULE = """
import torch
from torch import nn

N, C = 64, 3


def _seeded(seed):
    return torch.Generator().manual_seed(seed)


def model():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        net = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(4 * 3 * 3, C),
        )
        bn = net[1]
        g = _seeded(99)
        # non-trivial BatchNorm state, so that states-directions and ignore=none matter
        bn.weight.data = 1.0 + 0.3 * torch.randn(4, generator=g)
        bn.bias.data = 0.2 * torch.randn(4, generator=g)
        bn.running_mean.copy_(0.1 * torch.randn(4, generator=g))
        bn.running_var.copy_(0.5 + torch.rand(4, generator=g))
        bn.num_batches_tracked.fill_(7)
    return net


def model64():
    return model().double()


def other_model():
    # same architecture, other weights: a different θ0
    net = model()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(1.5)
    return net


def linear_model():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        return nn.Sequential(nn.Flatten(), nn.Linear(36, C))


def data():
    g = _seeded(7)
    inputs = torch.randn(N, 1, 6, 6, generator=g)
    targets = torch.randint(0, C, (N,), generator=g)
    return inputs, targets


def test_data():
    g = _seeded(17)
    return torch.randn(40, 1, 6, 6, generator=g), torch.randint(0, C, (40,), generator=g)


def float_label_data():
    x, y = data()
    return x, y.float()


def data64():
    x, y = data()
    return x.double(), y


def dataset():
    return torch.utils.data.TensorDataset(*data())


def regression_data():
    x, _ = data()
    return x, torch.randn(N, C, generator=_seeded(8))


def wrong_channels_data():
    x, y = data()
    return torch.cat([x, x], dim=1), y


def mismatched_lengths_data():
    x, y = data()
    return x, y[:-1]


def empty_data():
    x, y = data()
    return x[:0], y[:0]


def not_a_module():
    return "not a model"


def not_data():
    return {"inputs": 1}


def raising_model():
    raise RuntimeError("boom in the factory")


not_callable = 42


def mean_cross_entropy(outputs, targets):
    return nn.functional.cross_entropy(outputs, targets)


def per_element_loss(outputs, targets):
    return outputs  # (B, C): neither one value per sample nor a scalar


class _NoLength(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter(zip(*data()))


def iterable_data():
    return _NoLength()


class _DictSamples(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"image": torch.zeros(1, 6, 6), "label": 1}


def dict_data():
    return _DictSamples()


class _MissingImages(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.load(f"no_such_image_{i}.pt"), 0  # FileNotFoundError, as a folder of images would


def missing_images_data():
    return _MissingImages()


class _Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = model()

    def forward(self, x):
        return self.net(x), None


def tuple_model():
    return _Pair()


def broadcasting_loss(outputs, targets):
    return (outputs - targets).abs()  # (B, C) against (B,): fails for C != B
"""


def assert_one_line_error(rc, out, err, *needles):
    assert rc != 0, (rc, out, err)
    assert err.startswith("dsurf: error:"), err
    assert err.count("\n") == 1 and err.endswith("\n"), f"not exactly one line: {err!r}"
    assert "Traceback" not in err
    assert "\x1b" not in err, f"terminal codes in the error: {err!r}"
    for needle in needles:
        assert needle.lower() in err.lower(), f"{needle!r} not in {err!r}"


def read_h5(path):
    """Everything in a surface file as plain Python/numpy (datasets and attributes)."""
    result = {"attrs": {}, "data": {}, "dir_attrs": {}}
    with h5py.File(path, "r") as f:
        result["attrs"] = dict(f.attrs)
        f.visititems(
            lambda name, obj: (
                result["data"].__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
            )
        )
        for axis in f.get("directions", {}):
            result["dir_attrs"][axis] = dict(f["directions"][axis].attrs)
    return result


def reference_point(model, direction_list, inputs, targets, offset, dir_type="weights"):
    """Loss and accuracy at θ0 + Σ offset[k]·d_k, computed independently in float64: a float64 copy of
    the model, its tensors set by hand, one forward pass over all the data."""
    m = copy.deepcopy(model).double().eval()
    base = model.state_dict()
    names = [n for n, _ in model.named_parameters()] if dir_type == "weights" else list(base)
    with torch.no_grad():
        tensors = dict(m.state_dict(keep_vars=True))
        for name in names:
            if not base[name].is_floating_point():
                continue
            value = base[name].double().clone()
            for coefficient, direction in zip(offset, direction_list):
                value += float(coefficient) * direction[name].double()
            tensors[name].copy_(value)
        out = m(inputs.double())
        loss = F.cross_entropy(out, targets, reduction="none").mean().item()
        acc = 100.0 * (out.argmax(1) == targets).double().mean().item()
    return loss, acc


def overwritten_chunks(path) -> int:
    """How many chunks of a surface file lost some of their points' timing records to a later run: each
    point keeps the record of the last chunk that computed it, so a chunk with fewer records than its
    points had points computed again (by design only a chunk killed between its values and its done
    bits is)."""
    with h5py.File(path, "r", locking=False) as f:
        slots = f["timings"][()]
    slots = slots[slots["points"] > 0]
    keys, counts = np.unique(np.stack([slots["run"], slots["first_index"]], axis=1), axis=0, return_counts=True)
    sizes = {tuple(k): int(s) for k, s in zip(np.stack([slots["run"], slots["first_index"]], axis=1).tolist(), slots["points"])}
    return sum(1 for key, count in zip(keys.tolist(), counts) if count != sizes[tuple(key)])


def np_equal_nan(a, b):
    return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def file_bytes(path: Path) -> bytes:
    return Path(path).read_bytes()
