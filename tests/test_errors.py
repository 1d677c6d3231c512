"""Every bad input, through ``dsurf`` itself: a non-zero exit, exactly one line on stderr that starts
with "dsurf: error:" and names the problem, no traceback, and an existing surface file left byte for
byte as it was (docs/getting-started.md, "Mistakes get one line")."""

from __future__ import annotations

import io
import pickle

import h5py
import numpy as np
import pytest
import torch

from helpers import assert_one_line_error, file_bytes

OUT = "existing.h5"
GRID = ["--x", "-1:1:3"]


@pytest.fixture
def existing(dsurf, run_args, tmp_path):
    """A complete surface file at tmp_path/existing.h5 and its bytes."""
    rc, _, err = dsurf(*run_args, *GRID, "--out", OUT)
    assert rc == 0, err
    path = tmp_path / OUT
    return path, file_bytes(path)


def run_with(tiny, *flags, model="model", data="data"):
    """``dsurf run`` of the tiny problem with ``flags``; model/data None leaves the flag out."""
    args = ["run"]
    if model is not None:
        args += ["--model", tiny.spec(model) if ":" not in model else model]
    if data is not None:
        args += ["--data", tiny.spec(data) if ":" not in data else data]
    return args + list(flags) + ["--no-plot", "--no-progress"]


def check(dsurf, existing, args, *needles):
    path, before = existing
    rc, out, err = dsurf(*args)
    assert_one_line_error(rc, out, err, *needles)
    assert path.read_bytes() == before, "the existing surface file was changed"
    return err


# ---------------------------------------------------------------- import strings and factories


@pytest.mark.parametrize(
    "model,data,needles",
    [
        ("no_such_package_xyz.sub:model", "data", ["--model", "no_such_package_xyz"]),
        ("distributed_surface.example:no_such_factory", "data", ["--model", "no_such_factory"]),
        ("model", "no_such_data", ["--data", "no_such_data"]),
        ("missing_file.py:model", "data", ["--model", "missing_file.py", "no such file"]),
        ("model", "missing_file.py:data", ["--data", "missing_file.py"]),
        ("just_a_name", "data", ["--model", "just_a_name"]),
        ("not_callable", "data", ["--model", "not callable"]),
        ("raising_model", "data", ["--model", "boom in the factory"]),
        ("not_a_module", "data", ["--model", "str", "nn.Module"]),
        ("model", "not_data", ["--data", "dict", "Dataset"]),
        ("model", "mismatched_lengths_data", ["--data", "differ in length", "inputs 64, targets 63"]),
        ("model", "empty_data", ["--data", "no samples"]),
        ("model", "iterable_data", ["--data", "no length"]),
        ("model", "dict_data", ["--data", "dict samples", "'labels'", "'image', 'label'"]),
        ("model", "missing_images_data", ["--data", "FileNotFoundError"]),
    ],
)
def test_bad_model_or_data(tiny, dsurf, existing, model, data, needles):
    check(
        dsurf, existing, run_with(tiny, *GRID, "--out", OUT, "--overwrite", model=model, data=data), *needles
    )


def test_module_file_that_fails_to_import(tiny, dsurf, existing, tmp_path):
    (tmp_path / "broken.py").write_text("def model(:\n    pass\n")
    check(
        dsurf,
        existing,
        run_with(tiny, "--out", OUT, "--overwrite", model=f"{tmp_path}/broken.py:model"),
        "--model",
        "broken.py",
        "SyntaxError",
    )


def test_model_without_data(tiny, dsurf, existing):
    check(dsurf, existing, run_with(tiny, "--out", OUT, "--overwrite", data=None), "--model and --data")


def test_data_the_model_rejects(tiny, dsurf, existing):
    check(
        dsurf,
        existing,
        run_with(tiny, *GRID, "--out", OUT, "--overwrite", data="wrong_channels_data"),
        "model rejects --data",
        "(2, 6, 6)",
    )


def test_loss_of_the_wrong_shape(tiny, dsurf, existing):
    check(
        dsurf,
        existing,
        run_with(tiny, *GRID, "--out", OUT, "--overwrite", "--loss", tiny.spec("per_element_loss")),
        "the loss rejects",
        "one value per sample",
    )


def test_data_the_loss_rejects(tiny, dsurf, existing):
    check(
        dsurf,
        existing,
        run_with(tiny, *GRID, "--out", OUT, "--overwrite", "--loss", tiny.spec("broadcasting_loss")),
        "the loss rejects",
    )


# ---------------------------------------------------------------- checkpoints


def _save(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _corrupt(kind, tiny):
    good = _save(tiny.model().state_dict())
    return {
        "random": np.random.default_rng(1).bytes(300),
        "random2": np.random.default_rng(2).bytes(64),
        "empty": b"",
        "truncated": good[: len(good) // 2],
        "flipped": good[:40] + bytes(b ^ 0xFF for b in good[40:200]) + good[200:],
        "text": b"hello world\n",
        "pickle_stop": b".",
        "pickled_state_dict": pickle.dumps(tiny.model().state_dict(), protocol=4),
    }[kind]


@pytest.mark.parametrize(
    "kind",
    [
        "random",
        "random2",
        "empty",
        "truncated",
        "flipped",
        "text",
        "pickle_stop",
        "pickled_state_dict",
    ],
)
def test_corrupt_checkpoint(tiny, dsurf, existing, tmp_path, kind):
    (tmp_path / "bad.pt").write_bytes(_corrupt(kind, tiny))
    check(
        dsurf,
        existing,
        run_with(tiny, *GRID, "--out", OUT, "--overwrite", "--checkpoint", "bad.pt"),
        "--checkpoint",
        "bad.pt",
    )


def test_missing_checkpoint(tiny, dsurf, existing):
    check(
        dsurf,
        existing,
        run_with(tiny, *GRID, "--out", OUT, "--overwrite", "--checkpoint", "nowhere.pt"),
        "--checkpoint",
        "nowhere.pt",
        "no such file",
    )


def test_checkpoint_of_another_model(tiny, dsurf, existing, tmp_path):
    torch.save(tiny.linear_model().state_dict(), tmp_path / "other.pt")
    check(
        dsurf,
        existing,
        run_with(tiny, *GRID, "--out", OUT, "--overwrite", "--checkpoint", "other.pt"),
        "other.pt",
        "does not match",
        "missing",
        "0.weight",
    )


def test_checkpoint_with_missing_and_extra_keys(tiny, dsurf, existing, tmp_path):
    state = tiny.model().state_dict()
    state["extra.weight"] = state.pop("5.weight")
    torch.save(state, tmp_path / "keys.pt")
    check(
        dsurf,
        existing,
        run_with(tiny, *GRID, "--out", OUT, "--overwrite", "--checkpoint", "keys.pt"),
        "does not match",
        "5.weight",
        "extra.weight",
    )


def test_checkpoint_with_wrong_shapes(tiny, dsurf, existing, tmp_path):
    state = tiny.model().state_dict()
    state["5.weight"] = torch.zeros(4, 36)
    torch.save(state, tmp_path / "shape.pt")
    check(
        dsurf,
        existing,
        run_with(tiny, *GRID, "--out", OUT, "--overwrite", "--checkpoint", "shape.pt"),
        "does not match",
        "5.weight",
        "(4, 36)",
        "(3, 36)",
    )


def test_checkpoint_holding_no_state_dict(tiny, dsurf, existing, tmp_path):
    torch.save(torch.ones(3), tmp_path / "tensor.pt")
    check(
        dsurf,
        existing,
        run_with(tiny, *GRID, "--out", OUT, "--overwrite", "--checkpoint", "tensor.pt"),
        "tensor.pt",
        "state_dict",
    )


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "flags,needles",
    [
        (["--x", "-1:1:0"], ["--x", "at least 1"]),
        (["--x", "1:-1:3"], ["--x", "MIN must not exceed MAX"]),
        (["--x=0:0:5"], ["--x", "MIN < MAX"]),
        (["--x", "a:1:3"], ["--x", "number"]),
        (["--x", "-1:1:z"], ["--x", "whole number"]),
        (["--x", "-1:1"], ["--x", "MIN:MAX:NUM"]),
        (["--x", "-1:1:3", "--y", "0:1:0"], ["--y", "at least 1"]),
        (["--x", "-1:1:3", "--y", "1:0:2"], ["--y", "MIN must not exceed MAX"]),
        (["--x", "-1:1:3", "--y", "0:1"], ["--y", "MIN:MAX:NUM"]),
        (["--norm", "spectral"], ["--norm", "spectral"]),
        (["--ignore", "bn"], ["--ignore", "bn"]),
        (["--dir-type", "buffers"], ["--dir-type", "buffers"]),
        (["--loss", "hinge"], ["--loss", "hinge"]),
        (["--loss", "no_such_mod_xyz:loss"], ["--loss", "no_such_mod_xyz"]),
        (["--device", "gpu"], ["--device", "gpu"]),
        (["--device", "cuda:x"], ["--device"]),
        (["--seed", "abc"], ["--seed", "abc"]),
        (["--seed", str(2**70)], ["--seed"]),
        (["--batch-size", "0"], ["--batch-size", "at least 1"]),
        (["--max-samples", "0"], ["--max-samples", "at least 1"]),
        (["--chunk-size", "0"], ["--chunk-size", "at least 1"]),
        (["--bogus-flag"], ["--bogus-flag"]),
    ],
)
def test_bad_settings(tiny, dsurf, existing, flags, needles):
    check(dsurf, existing, run_with(tiny, *GRID, *flags, "--out", OUT, "--overwrite"), *needles)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_cuda(tiny, dsurf, existing, device):
    check(
        dsurf,
        existing,
        run_with(tiny, *GRID, "--device", device, "--out", OUT, "--overwrite"),
        "--device",
        "CUDA is not available",
    )


def test_unknown_command(dsurf, existing):
    check(dsurf, existing, ["frobnicate"], "frobnicate")


def test_no_command(dsurf, existing):
    check(dsurf, existing, [], "command")


# ---------------------------------------------------------------- output


def test_output_in_a_missing_directory(tiny, dsurf, existing, tmp_path):
    check(
        dsurf,
        existing,
        run_with(tiny, *GRID, "--out", "no/such/dir/s.h5"),
        "--out",
        "no/such/dir",
        "does not exist",
    )
    assert not (tmp_path / "no").exists()


def test_output_is_a_directory(tiny, dsurf, existing, tmp_path):
    (tmp_path / "adir").mkdir()
    check(dsurf, existing, run_with(tiny, *GRID, "--out", "adir"), "--out", "directory")


def test_existing_output_without_resume_or_overwrite(tiny, dsurf, existing):
    check(dsurf, existing, run_with(tiny, *GRID, "--out", OUT), OUT, "exists", "--resume", "--overwrite")


def test_existing_output_of_another_kind_is_not_replaced(tiny, dsurf, existing, tmp_path):
    (tmp_path / "notes.txt").write_text("precious\n")
    rc, out, err = dsurf(*run_with(tiny, *GRID, "--out", "notes.txt"))
    assert_one_line_error(rc, out, err, "exists")
    assert (tmp_path / "notes.txt").read_text() == "precious\n"


def test_resume_and_overwrite_together(tiny, dsurf, existing):
    check(
        dsurf,
        existing,
        run_with(tiny, *GRID, "--out", OUT, "--resume", "--overwrite"),
        "--resume",
        "--overwrite",
    )


@pytest.mark.parametrize(
    "flags,field",
    [
        (["--x", "-1:1:3", "--seed", "1"], "seed"),
        (["--x", "-1:1:5"], "x"),
        (["--x", "-1:1:3", "--y", "-1:1:3"], "y"),
        (["--x", "-1:1:3", "--norm", "layer"], "norm"),
        (["--x", "-1:1:3", "--ignore", "none"], "ignore"),
        (["--x", "-1:1:3", "--dir-type", "states"], "dir-type"),
        (["--x", "-1:1:3", "--max-samples", "10"], "max-samples"),
        (["--x", "-1:1:3", "--loss", "mse"], "loss"),
    ],
)
def test_resume_of_a_file_of_another_config(tiny, dsurf, existing, flags, field):
    err = check(dsurf, existing, run_with(tiny, *flags, "--out", OUT, "--resume"), "--resume", OUT)
    assert f" {field}=" in err, err


def test_resume_with_other_weights(tiny, dsurf, existing, tmp_path):
    torch.save(tiny.other_model().state_dict(), tmp_path / "other.pt")
    check(
        dsurf,
        existing,
        run_with(tiny, *GRID, "--checkpoint", "other.pt", "--out", OUT, "--resume"),
        "--resume",
        "weights",
    )


def test_resume_with_another_model_factory(tiny, dsurf, existing):
    err = check(
        dsurf, existing, run_with(tiny, *GRID, "--out", OUT, "--resume", model="other_model"), "--resume"
    )
    assert " model=" in err


def test_resume_of_an_hdf5_file_that_is_not_a_surface(tiny, dsurf, existing, tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("weights", data=np.arange(5))
        f.attrs["format"] = "something else"
    before = file_bytes(tmp_path / "other.h5")
    rc, out, err = dsurf(*run_with(tiny, *GRID, "--out", "other.h5", "--resume"))
    assert_one_line_error(rc, out, err, "other.h5", "not a distributed_surface file")
    assert file_bytes(tmp_path / "other.h5") == before


@pytest.mark.parametrize("content", [b"just some text\n", b"", b"\x89HDF\r\n\x1a\n" + b"\x00" * 100])
def test_resume_of_a_file_that_is_not_hdf5(tiny, dsurf, existing, tmp_path, content):
    (tmp_path / "plain.h5").write_bytes(content)
    rc, out, err = dsurf(*run_with(tiny, *GRID, "--out", "plain.h5", "--resume"))
    assert_one_line_error(rc, out, err, "plain.h5")
    assert file_bytes(tmp_path / "plain.h5") == content


def test_resume_of_a_truncated_surface(tiny, dsurf, existing, tmp_path):
    path, before = existing
    (tmp_path / "cut.h5").write_bytes(before[: len(before) // 2])
    rc, out, err = dsurf(*run_with(tiny, *GRID, "--out", "cut.h5", "--resume"))
    assert_one_line_error(rc, out, err, "cut.h5")
    assert file_bytes(tmp_path / "cut.h5") == before[: len(before) // 2]


# ---------------------------------------------------------------- TOML config files


def test_bad_toml(tiny, dsurf, existing, tmp_path):
    (tmp_path / "bad.toml").write_text('seed = = 3\nnorm = "filter\n')
    check(dsurf, existing, ["run", "bad.toml", "--out", OUT, "--overwrite"], "bad.toml", "TOML")


def test_toml_with_an_unknown_setting(tiny, dsurf, existing, tmp_path):
    (tmp_path / "unknown.toml").write_text('colour = "blue"\n')
    check(dsurf, existing, ["run", "unknown.toml", "--out", OUT, "--overwrite"], "unknown.toml", "colour")


def test_toml_with_a_value_of_the_wrong_type(tiny, dsurf, existing, tmp_path):
    (tmp_path / "typed.toml").write_text(
        f'model = "{tiny.spec("model")}"\ndata = "{tiny.spec("data")}"\nseed = "one"\n'
    )
    check(dsurf, existing, ["run", "typed.toml", "--out", OUT, "--overwrite"], "--seed", "one")


def test_missing_toml(dsurf, existing):
    check(
        dsurf, existing, ["run", "nowhere.toml", "--out", OUT, "--overwrite"], "nowhere.toml", "no such file"
    )


# ---------------------------------------------------------------- info and plot


@pytest.mark.parametrize("command", ["info", "plot"])
def test_info_and_plot_of_bad_files(dsurf, existing, tmp_path, command):
    (tmp_path / "text.h5").write_text("not hdf5\n")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    for name, needle in [
        ("missing.h5", "no such file"),
        ("text.h5", "HDF5"),
        ("other.h5", "not a distributed_surface"),
    ]:
        rc, out, err = dsurf(command, name)
        assert_one_line_error(rc, out, err, name, needle)
    assert not (tmp_path / "other_plots").exists() and not (tmp_path / "text_plots").exists()


# ---------------------------------------------------------------- --directions files


@pytest.mark.parametrize(
    "content",
    [b"a b c\nd e\n", b'cos\nsystem\n(S"ls"\ntR.'],  # text; a pickle that calls os.system (torch's long refusal)
    ids=["text", "code"],
)
def test_directions_file_that_is_not_a_torch_file(tiny, dsurf, existing, tmp_path, content):
    """torch's refusal of a pickle that would run code is several paragraphs (with terminal codes in some
    versions): the error is still one line."""
    (tmp_path / "d.txt").write_bytes(content)
    check(dsurf, existing, run_with(tiny, "--directions", "d.txt", *GRID, "--out", OUT, "--overwrite"), "--directions", "d.txt")


# ---------------------------------------------------------------- data that is not finite


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_data_with_a_value_that_is_not_finite(tiny, dsurf, existing, tmp_path, value):
    """One NaN input made every point NaN, with exit 0: refused, naming the sample."""
    (tmp_path / "bad_data.py").write_text(
        f"import sys\nsys.path.insert(0, {str(tiny.path.parent)!r})\nimport tiny\n"
        f"def data():\n    x, y = tiny.data()\n    x = x.clone()\n    x[5, 0, 2, 3] = float({str(value)!r})\n    return x, y\n"
    )
    check(dsurf, existing, run_with(tiny, *GRID, "--out", OUT, "--overwrite", data="bad_data.py:data"),
          "sample 5", "not finite", "inputs")  # fmt: skip


def test_a_model_whose_outputs_are_not_finite(tiny, dsurf, existing, tmp_path):
    (tmp_path / "nan_model.py").write_text(
        f"import sys\nsys.path.insert(0, {str(tiny.path.parent)!r})\nimport tiny, torch\n"
        "class NaNOut(torch.nn.Module):\n    def forward(self, x):\n        return x * float('nan')\n"
        "def model():\n    return torch.nn.Sequential(tiny.model(), NaNOut())\n"
    )
    check(dsurf, existing, run_with(tiny, *GRID, "--out", OUT, "--overwrite", model="nan_model.py:model"),
          "outputs at θ0", "not finite")  # fmt: skip
