"""More than train loss at every point: a test split evaluated on the same weights, token-level losses
of sequence models (cross-entropy over (B, T, C), Hugging Face's causal-LM convention), keyword inputs
from dict samples, model outputs with ``logits``, and the bad input that goes with them. Values are
checked against an independent float64 evaluation and against ``transformers``' own loss."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distributed_surface.core.directions import base_tensors, make_directions
from distributed_surface.core.evaluate import SurfaceEvaluator
from distributed_surface.core.losses import IGNORE_INDEX, causal_lm, cross_entropy
from distributed_surface.storage import read_surface
from helpers import assert_one_line_error, reference_point

OFFSETS = np.array([[0.0, 0.0], [0.4, -0.3], [-0.8, 0.6]])

# Sequence problems a user would write: a tiny token model with (B, T, V) outputs, token data with
# ignored (-100) positions, dict samples in the Hugging Face layout, and a tiny GPT-2 from a config.
SEQUENCE_MODULE = '''
import torch
from torch import nn

V, T, N = 11, 9, 20


class TokenModel(nn.Module):
    """Embedding, a mixing layer along the sequence, and a head: outputs (B, T, V)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(V, 8)
        self.mix = nn.Conv1d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, V)

    def forward(self, tokens):
        h = self.embed(tokens).transpose(1, 2)
        return self.head(torch.tanh(self.mix(h)).transpose(1, 2))


class KeywordTokenModel(TokenModel):
    """Takes keyword inputs and returns an object with ``.logits``, as a Hugging Face model does."""

    def forward(self, input_ids, attention_mask):
        logits = super().forward(input_ids) * attention_mask.unsqueeze(-1)
        return type("Output", (), {"logits": logits, "loss": None})()


def token_model():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        return TokenModel()


def keyword_model():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        return KeywordTokenModel()


def _tokens(seed, n=N):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (n, T), generator=g)
    lengths = torch.randint(3, T + 1, (n,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    labels = torch.where(mask.bool(), torch.randint(0, V, (n, T), generator=g), torch.full_like(tokens, -100))
    return tokens * mask, mask, labels


def token_data():
    tokens, _, labels = _tokens(5)
    return tokens, labels


def token_test_data():
    tokens, _, labels = _tokens(6, n=12)
    return tokens, labels


class _Dicts(torch.utils.data.Dataset):
    def __init__(self, with_labels=True):
        self.tokens, self.mask, self.labels = _tokens(5)
        self.with_labels = with_labels

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, i):
        item = {"input_ids": self.tokens[i], "attention_mask": self.mask[i]}
        if self.with_labels:
            item["labels"] = self.labels[i]
        return item


def dict_dataset():
    return _Dicts()


def dict_dataset_without_labels():
    return _Dicts(with_labels=False)


def all_ignored_data():
    tokens, _, labels = _tokens(5)
    return tokens, torch.full_like(labels, -100)


def short_targets_data():
    tokens, _, labels = _tokens(5)
    return tokens, labels[:, :-2]


def out_of_range_data():
    tokens, _, labels = _tokens(5)
    labels[7, 2] = V + 3
    return tokens, labels


class _NoLogits(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = token_model()

    def forward(self, tokens):
        return {"hidden": self.inner(tokens)}


def no_logits_model():
    return _NoLogits()


GPT2_VOCAB, GPT2_TOKENS = 256, 32


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=GPT2_VOCAB, n_positions=GPT2_TOKENS,
                        bos_token_id=0, eos_token_id=0, loss_type="ForCausalLM")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return GPT2LMHeadModel(config).eval()


class _Padded(torch.utils.data.Dataset):
    """Token sequences of 6 to 32 tokens, padded to 32: attention_mask 0 and labels -100 on the padding."""

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(1, GPT2_VOCAB, (n, GPT2_TOKENS), generator=g)
        lengths = torch.randint(6, GPT2_TOKENS + 1, (n,), generator=g)
        self.mask = (torch.arange(GPT2_TOKENS)[None] < lengths[:, None]).long()
        self.ids = ids * self.mask
        self.labels = torch.where(self.mask.bool(), ids, torch.full_like(ids, -100))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


def gpt2_data():
    return _Padded(24, seed=1)
'''


@pytest.fixture
def seq(tmp_path):
    """The sequence module on disk and imported; ``seq.spec(name)`` is its import string."""
    path = tmp_path / "seq.py"
    path.write_text(textwrap.dedent(SEQUENCE_MODULE))
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_seq_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.spec = lambda name: f"{path}:{name}"
    return module


def reference_tokens(model, directions, tokens, labels, offset, *, shift=False):
    """Token cross-entropy and accuracy at θ0 + Σ offset·d in float64, by hand: the mean over every
    counted token of the whole data set."""
    m = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for name, tensor in m.named_parameters():
            tensor.copy_(tensor + sum(float(c) * d[name].double() for c, d in zip(offset, directions)))
        out = m(tokens)
        if shift:
            out, labels = out[:, :-1], labels[:, 1:]
        keep = labels != IGNORE_INDEX
        losses = F.cross_entropy(out[keep], labels[keep], reduction="none")
        hits = (out[keep].argmax(-1) == labels[keep]).double()
    return losses.mean().item(), 100.0 * hits.mean().item()


# ---------------------------------------------------------------- the evaluator


def test_test_split_uses_the_same_weights_as_train(tiny):
    """At every point the test split is evaluated on the very weights the train split is."""
    model = tiny.model()
    directions = make_directions(base_tensors(model, "weights"), 2, "filter", "biasbn", 0)
    train = tiny.data()
    g = torch.Generator().manual_seed(17)
    test = torch.randn(40, 1, 6, 6, generator=g), torch.randint(0, 3, (40,), generator=g)
    for vmap in ("off", "on"):
        ev = SurfaceEvaluator(tiny.model(), directions, {"train": train, "test": test}, cross_entropy, 16, vmap=vmap)
        assert [m.name for m in ev.measurements] == ["train_loss", "train_acc", "test_loss", "test_acc"]
        got = ev.evaluate(OFFSETS)
        for k, offset in enumerate(OFFSETS):
            for split, (x, y) in (("train", train), ("test", test)):
                loss, acc = reference_point(model, directions, x, y, offset)
                assert got[f"{split}_loss"][k] == pytest.approx(loss, rel=1e-6), (vmap, split, k)
                assert got[f"{split}_acc"][k] == pytest.approx(acc, abs=1e-9)


def test_uint8_labels_count_like_int64_ones():
    """-100 (ignore_index) must not wrap around in a uint8 tensor: 156 is a class there, not ignored."""
    labels = torch.tensor([[156, 3], [200, 156]], dtype=torch.uint8)
    assert cross_entropy.label_count(labels) == cross_entropy.label_count(labels.long()) == 4
    logits = torch.zeros(1, 2, 2, 201)
    loss, hits = cross_entropy.sums(logits, labels, True)
    assert loss.item() == pytest.approx(4 * np.log(201)) and hits.item() == 0


@pytest.mark.parametrize("vmap", ["off", "on"])
def test_token_cross_entropy_is_the_mean_over_counted_tokens(seq, vmap):
    tokens, labels = seq.token_data()
    assert (labels == IGNORE_INDEX).any()
    model = seq.token_model()
    directions = make_directions(base_tensors(model, "weights"), 2, "filter", "biasbn", 0)
    ev = SurfaceEvaluator(seq.token_model(), directions, (tokens, labels), cross_entropy, 7, vmap=vmap, points_per_pass=2)
    assert ev.plan.path == ("vmap" if vmap == "on" else "plain")
    got = ev.evaluate(OFFSETS)
    for k, offset in enumerate(OFFSETS):
        loss, acc = reference_tokens(model, directions, tokens, labels, offset)
        assert got["train_loss"][k] == pytest.approx(loss, rel=1e-6)
        assert got["train_acc"][k] == pytest.approx(acc, abs=1e-9)
    # not the mean of per-sequence means, which weighs a short sequence's tokens more
    with torch.no_grad():
        out = model(tokens)
    per_sequence = [F.cross_entropy(o[l != -100], l[l != -100]).item() for o, l in zip(out, labels)]
    assert abs(np.mean(per_sequence) - got["train_loss"][0]) > 1e-4


def test_causal_lm_shifts_by_one(seq):
    tokens, labels = seq.token_data()
    model = seq.token_model()
    directions = make_directions(base_tensors(model, "weights"), 1, "filter", "biasbn", 0)
    ev = SurfaceEvaluator(seq.token_model(), directions, (tokens, labels), causal_lm, 8)
    got = ev.evaluate(np.array([[0.0], [0.5]]))
    for k, offset in enumerate(([0.0], [0.5])):
        loss, acc = reference_tokens(model, directions, tokens, labels, offset, shift=True)
        assert got["train_loss"][k] == pytest.approx(loss, rel=1e-6)
        assert got["train_acc"][k] == pytest.approx(acc, abs=1e-9)


def test_keyword_inputs_and_logits_outputs(seq):
    """Dict inputs go to the model as keyword arguments; an output object's ``logits`` is used."""
    dataset = seq.dict_dataset()
    ids = torch.stack([dataset[i]["input_ids"] for i in range(len(dataset))])
    mask = torch.stack([dataset[i]["attention_mask"] for i in range(len(dataset))])
    labels = torch.stack([dataset[i]["labels"] for i in range(len(dataset))])
    model = seq.keyword_model()
    directions = make_directions(base_tensors(model, "weights"), 2, "filter", "biasbn", 0)
    data = ({"input_ids": ids, "attention_mask": mask}, labels)
    plain = SurfaceEvaluator(seq.keyword_model(), directions, data, cross_entropy, 6, vmap="off").evaluate(OFFSETS)
    fast = SurfaceEvaluator(seq.keyword_model(), directions, data, cross_entropy, 6, vmap="on", points_per_pass=3)
    np.testing.assert_allclose(fast.evaluate(OFFSETS)["train_loss"], plain["train_loss"], rtol=1e-6)
    with torch.no_grad():
        out = model(ids, mask).logits
    keep = labels != -100
    assert plain["train_loss"][0] == pytest.approx(F.cross_entropy(out[keep], labels[keep]).item(), rel=1e-6)


# ---------------------------------------------------------------- the command line


def test_run_with_a_test_split(tiny, dsurf, run_args, tmp_path):
    rc, out, err = dsurf(*run_args, "--x", "-1:1:3", "--y", "-1:1:3", "--test-data", tiny.spec("test_data"),
                         "--max-test-samples", "30", "--out", "t.h5")  # fmt: skip
    assert rc == 0, err
    data = read_surface(str(tmp_path / "t.h5"))
    assert sorted(data.metrics) == ["test_acc", "test_loss", "train_acc", "train_loss"]
    assert data.attrs["test_num_samples"] == 30 and data.attrs["num_samples"] == 64
    directions = make_directions(base_tensors(tiny.model(), "weights"), 2, "filter", "biasbn", 0)
    x, y = tiny.test_data()
    for i, a in enumerate(data.x):
        for j, b in enumerate(data.y):
            loss, acc = reference_point(tiny.model(), directions, x[:30], y[:30], (a, b))
            assert data.metrics["test_loss"][i, j] == pytest.approx(loss, rel=1e-6)
            assert data.metrics["test_acc"][i, j] == pytest.approx(acc, abs=1e-9)
    rc, out, err = dsurf("info", "t.h5")
    assert rc == 0 and "test_loss" in out and "test_acc" in out and "min" in out
    rc, out, err = dsurf("plot", "t.h5")
    assert rc == 0, err
    names = {os.path.basename(p) for p in out.split()}
    assert {"t_2d_gap_loss.png", "t_2d_gap_acc.png", "t_2d_contour_test_loss.png", "t_3d_surface_test_acc.png"} <= names
    rc, out, err = dsurf("export", "t.h5", "--format", "csv")
    assert rc == 0 and (tmp_path / "t.csv").read_text().splitlines()[0] == "x,y,train_loss,train_acc,test_loss,test_acc"
    rc, out, err = dsurf("export", "t.h5", "--format", "vtp", "--kind", "test_loss")
    assert rc == 0 and 'Scalars="test_loss"' in (tmp_path / "t_test_loss.vtp").read_text()


def test_resume_refuses_other_test_data_by_name(tiny, dsurf, run_args, tmp_path):
    """Same import string, other content: the test data's hash is in the file's fingerprint."""
    (tmp_path / "held_out.py").write_text(textwrap.dedent('''
        import torch
        def data():
            return torch.load("held_out.pt")
    '''))
    g = torch.Generator().manual_seed(1)
    torch.save((torch.randn(20, 1, 6, 6, generator=g), torch.randint(0, 3, (20,), generator=g)), tmp_path / "held_out.pt")
    args = [*run_args, "--x", "-1:1:4", "--test-data", "held_out.py:data", "--out", "r.h5"]
    assert dsurf(*args)[0] == 0
    before = (tmp_path / "r.h5").read_bytes()
    x, y = torch.load(tmp_path / "held_out.pt")
    torch.save((x, (y + 1) % 3), tmp_path / "held_out.pt")
    rc, out, err = dsurf(*args, "--resume")
    assert_one_line_error(rc, out, err, "--resume", "the test data differ")
    assert (tmp_path / "r.h5").read_bytes() == before
    rc, out, err = dsurf(*run_args, "--x", "-1:1:4", "--out", "r.h5", "--resume")  # no test split now
    assert_one_line_error(rc, out, err, "--resume", "test-data")


def test_token_model_from_the_command_line(seq, dsurf, tmp_path):
    args = ["run", "--model", seq.spec("token_model"), "--data", seq.spec("token_data"), "--test-data",
            seq.spec("token_test_data"), "--x", "-1:1:5", "--out", "tok.h5", "--no-progress"]  # fmt: skip
    rc, out, err = dsurf(*args)
    assert rc == 0, err
    data = read_surface(str(tmp_path / "tok.h5"))
    directions = make_directions(base_tensors(seq.token_model(), "weights"), 1, "filter", "biasbn", 0)
    tokens, labels = seq.token_test_data()
    for i, a in enumerate(data.x):
        loss, acc = reference_tokens(seq.token_model(), directions, tokens, labels, [a])
        assert data.metrics["test_loss"][i] == pytest.approx(loss, rel=1e-6)
        assert data.metrics["test_acc"][i] == pytest.approx(acc, abs=1e-9)
    assert (tmp_path / "tok_plots" / "tok_1d_loss_acc.png").is_file()


def test_dict_dataset_from_the_command_line(seq, dsurf, tmp_path):
    rc, out, err = dsurf("run", "--model", seq.spec("keyword_model"), "--data", seq.spec("dict_dataset"),
                         "--x", "-1:1:3", "--out", "d.h5", "--no-plot", "--no-progress")  # fmt: skip
    assert rc == 0, err
    assert read_surface(str(tmp_path / "d.h5")).done.all()


def test_tuple_output_uses_its_first_element(tiny, dsurf, run_args, tmp_path):
    args = ["--x", "-1:1:3", "--no-plot", "--no-progress"]
    assert dsurf("run", "--model", tiny.spec("tuple_model"), "--data", tiny.spec("data"), *args, "--out", "a.h5")[0] == 0
    assert dsurf("run", "--model", tiny.spec("model"), "--data", tiny.spec("data"), *args, "--out", "b.h5")[0] == 0
    a, b = read_surface(str(tmp_path / "a.h5")), read_surface(str(tmp_path / "b.h5"))
    np.testing.assert_array_equal(a.metrics["train_loss"], b.metrics["train_loss"])


@pytest.mark.parametrize(
    "flags,needles",
    [
        (["--test-data", "no_such_module:data"], ["--test-data", "no_such_module"]),
        (["--test-data", "TINY:wrong_channels_data"], ["model rejects --test-data", "(2, 6, 6)"]),
        (["--test-data", "TINY:float_label_data"], ["loss rejects", "--test-data", "float32", "(2,)"]),
        (["--max-test-samples", "5"], ["--max-test-samples needs --test-data"]),
    ],
)
def test_bad_test_split(tiny, dsurf, run_args, tmp_path, flags, needles):
    flags = [f.replace("TINY:", f"{tiny.path}:") for f in flags]
    rc, out, err = dsurf(*run_args, "--x", "-1:1:3", "--out", "bad.h5", *flags)
    assert_one_line_error(rc, out, err, *needles)
    assert not (tmp_path / "bad.h5").exists()


@pytest.mark.parametrize(
    "model,data,loss,needles",
    [
        ("token_model", "short_targets_data", "cross_entropy", ["loss rejects", "(2, 7)", "(2, 9, 11)"]),
        ("keyword_model", "dict_dataset_without_labels", "cross_entropy", ["'labels'", "attention_mask", "input_ids"]),
        ("no_logits_model", "token_data", "cross_entropy", ["neither 'logits'", "dict"]),
        ("token_model", "all_ignored_data", "cross_entropy", ["every target is ignored"]),
        ("token_model", "all_ignored_data", "causal_lm", ["every target is ignored"]),
        ("token_model", "out_of_range_data", "cross_entropy", ["class label 14 of sample 7", "11 outputs"]),
        ("token_model", "token_data", "mse", ["loss rejects", "mse"]),
    ],
)
def test_bad_sequence_input(seq, dsurf, tmp_path, model, data, loss, needles):
    rc, out, err = dsurf("run", "--model", seq.spec(model), "--data", seq.spec(data), "--loss", loss,
                         "--x", "-1:1:3", "--out", "bad.h5", "--no-plot")  # fmt: skip
    assert_one_line_error(rc, out, err, *needles)
    assert not (tmp_path / "bad.h5").exists()


# ---------------------------------------------------------------- a real Hugging Face model (launch/setup.sh installs transformers)


def hf_token_weighted_loss(seq, batch_size: int) -> float:
    """``transformers``' own loss at θ0, over the data set: each batch's ``model(**batch).loss``
    weighted by the batch's counted (shifted, not ignored) tokens."""
    model, dataset = seq.tiny_gpt2(), seq.gpt2_data()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
            count = int((batch["labels"][:, 1:] != -100).sum())
            total += float(model(**batch).loss.double()) * count
            tokens += count
    return total / tokens


def test_tiny_gpt2_equals_transformers_own_loss(seq, dsurf, tmp_path):
    reference = hf_token_weighted_loss(seq, batch_size=5)
    results = {}
    for vmap in ("off", "on"):
        rc, out, err = dsurf("run", "--model", seq.spec("tiny_gpt2"), "--data", seq.spec("gpt2_data"), "--loss",
                             "causal_lm", "--x", "-0.5:0.5:3", "--y", "-0.5:0.5:3", f"--vmap={vmap}",
                             "--out", f"gpt2_{vmap}.h5", "--no-plot", "--no-progress")  # fmt: skip
        assert rc == 0, err
        results[vmap] = read_surface(str(tmp_path / f"gpt2_{vmap}.h5"))
    for data in results.values():
        assert data.metrics["train_loss"][1, 1] == pytest.approx(reference, rel=1e-6)  # θ0 is the centre
    np.testing.assert_allclose(results["on"].metrics["train_loss"], results["off"].metrics["train_loss"], rtol=1e-6)
    np.testing.assert_allclose(results["on"].metrics["train_acc"], results["off"].metrics["train_acc"], atol=1e-9)
    assert results["on"].config["vmap"] == "on"


@pytest.mark.mpi
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="mpirun is not installed")
def test_tiny_gpt2_under_mpirun_equals_serial(seq, tmp_path):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    args = [sys.executable, "-m", "distributed_surface", "run", "--model", seq.spec("tiny_gpt2"), "--data",
            seq.spec("gpt2_data"), "--loss", "causal_lm", "--x", "-0.5:0.5:5", "--chunk-size", "1",
            "--no-plot", "--no-progress"]  # fmt: skip
    serial = subprocess.run([*args, "--out", "serial.h5"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert serial.returncode == 0, serial.stderr
    mpi = subprocess.run(["mpirun", "--oversubscribe", "-np", "2", *args, "--out", "mpi.h5"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert mpi.returncode == 0, mpi.stderr
    a, b = read_surface(str(tmp_path / "serial.h5")), read_surface(str(tmp_path / "mpi.h5"))
    np.testing.assert_allclose(b.metrics["train_loss"], a.metrics["train_loss"], rtol=1e-7)
    assert set(b.timings["rank"]) == {0, 1}
    assert a.metrics["train_loss"][2] == pytest.approx(hf_token_weighted_loss(seq, batch_size=24), rel=1e-6)

