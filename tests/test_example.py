"""The built-in example: the digits data and the small CNN trained on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distributed_surface import example
from distributed_surface.storage import read_surface


def test_digits_data_shapes():
    inputs, targets = example.digits_data()
    assert inputs.shape == (1797, 1, 8, 8) and inputs.dtype == torch.float32
    assert targets.shape == (1797,) and targets.dtype == torch.int64
    assert 0.0 <= inputs.min() and inputs.max() <= 1.0
    assert sorted(targets.unique().tolist()) == list(range(10))


def test_trained_digits_cnn_is_accurate_and_cached(tmp_path, monkeypatch, dsurf):
    monkeypatch.setenv("DSURF_CACHE", str(tmp_path / "cache"))
    assert not example.cache_path().exists()
    model = example.trained_digits_cnn()
    assert example.cache_path().is_file()
    inputs, targets = example.digits_data()
    with torch.no_grad():
        accuracy = 100.0 * (model.eval()(inputs).argmax(1) == targets).double().mean().item()
    assert accuracy > 90.0
    # the cached model is the same network, bit for bit
    again = example.trained_digits_cnn()
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name

    # with no --model/--data, `dsurf run` uses the example (from the cache: fast)
    rc, _, err = dsurf(
        "run", "--x", "0:0:1", "--max-samples", "256", "--out", "ex.h5", "--no-plot", "--no-progress"
    )
    assert rc == 0, err
    data = read_surface(str(tmp_path / "ex.h5"))
    assert (
        data.attrs["num_samples"] == 256
        and data.config["model"] == "distributed_surface.example:trained_digits_cnn"
    )
    with torch.no_grad():
        expected = 100.0 * (model(inputs[:256]).argmax(1) == targets[:256]).double().mean().item()
    assert data.metrics["train_acc"][0] == pytest.approx(expected)
    assert np.isfinite(data.metrics["train_loss"][0])


def test_batch_size_flag_trains_another_model_and_the_default_is_the_built_in(tmp_path, capsys):
    """python -m distributed_surface.example --batch-size: the paper's small-against-large-batch
    comparison; without it, the built-in model's training (batch 64) as before."""
    assert example.main(["--epochs", "1", "--out", str(tmp_path / "default.pt")]) == 0
    assert example.main(["--epochs", "1", "--batch-size", "64", "--out", str(tmp_path / "b64.pt")]) == 0
    assert example.main(["--epochs", "1", "--batch-size", "256", "--lr", "0.01", "--out", str(tmp_path / "b256.pt")]) == 0
    default, b64, b256 = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("default", "b64", "b256"))
    assert all(torch.equal(default[k], b64[k]) for k in default)
    assert not torch.equal(default["8.weight"], b256["8.weight"])
    with pytest.raises(SystemExit):
        example.main(["--batch-size", "0", "--out", str(tmp_path / "bad.pt")])
    assert "--batch-size must be at least 1" in capsys.readouterr().err
