"""Where the data is kept (--data-placement device|host|stream|auto, --workers) and the CPU threads of a
rank: every placement gives the same surface, a streamed Dataset is read on every pass and refused where
its items change between reads, auto streams what host memory cannot hold, and the threads and the
placement are printed and recorded with every chunk."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from distributed_surface import problem as problem_module
from distributed_surface.core.directions import base_tensors, make_directions
from distributed_surface.core.evaluate import SurfaceEvaluator
from distributed_surface.core.samples import Samples
from distributed_surface.core.stream import SamplesDataset, StreamedSamples
from distributed_surface.engine.runtime import threads_per_rank
from distributed_surface.storage import read_surface
from helpers import assert_one_line_error

DATASETS = '''
import torch
from helpers_tiny import data


class Counted(torch.utils.data.Dataset):
    """The tiny data as a Dataset of (input, target) items; counts its reads (per process)."""

    reads = 0

    def __init__(self):
        self.x, self.y = data()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        Counted.reads += 1
        return self.x[i], int(self.y[i])


class Augmented(Counted):
    """Random augmentation: every read of an item differs."""

    def __getitem__(self, i):
        return self.x[i] + 0.1 * torch.randn(self.x[i].shape), int(self.y[i])


def dataset():
    return Counted()


def augmented():
    return Augmented()
'''


@pytest.fixture
def datasets(tiny, tmp_path, monkeypatch):
    """A module of Datasets built on the tiny data (``datasets.spec(name)``)."""
    (tmp_path / "helpers_tiny.py").write_text(tiny.path.read_text())
    (tmp_path / "datasets_mod.py").write_text(textwrap.dedent(DATASETS))
    monkeypatch.syspath_prepend(str(tmp_path))
    return lambda name: f"{tmp_path / 'datasets_mod.py'}:{name}"


@pytest.mark.parametrize("source", ["tensors", "dataset"])
def test_every_placement_gives_the_same_surface(dsurf, tiny, datasets, source):
    data = tiny.spec("data") if source == "tensors" else datasets("dataset")
    common = ["run", "--model", tiny.spec("model"), "--data", data, "--test-data", tiny.spec("test_data"),
              "--x", "-1:1:4", "--y", "-1:1:3", "--chunk-size", "5", "--batch-size", "7", "--no-plot"]  # fmt: skip
    surfaces = {}
    for placement, extra in (("device", []), ("host", []), ("stream", []), ("stream", ["--workers", "2"]), ("auto", [])):
        name = f"{placement}{len(extra)}.h5"
        rc, out, err = dsurf(*common, "--data-placement", placement, *extra, "--out", name)
        assert rc == 0, err
        words = {"device": "on the device", "host": "in host memory", "stream": "read from its Dataset on every pass"}
        assert words["device" if placement == "auto" else placement] in err
        surfaces[name] = read_surface(name)
    reference = surfaces["device0.h5"]
    for name, surface in surfaces.items():
        assert set(surface.metrics) == {"train_loss", "train_acc", "test_loss", "test_acc"}
        for key, values in surface.metrics.items():
            np.testing.assert_allclose(values, reference.metrics[key], rtol=1e-7, atol=0, err_msg=f"{name} {key}")
        placement = {"device0.h5": "device", "host0.h5": "host", "auto0.h5": "device"}.get(name, "stream")
        assert set(surface.timings["placement"]) == {placement.encode()}


def test_resume_with_another_placement(dsurf, tiny, datasets):
    common = ["run", "--model", tiny.spec("model"), "--data", datasets("dataset"), "--x", "-1:1:5", "--y", "-1:1:3",
              "--chunk-size", "4", "--no-plot", "--out", "s.h5"]  # fmt: skip
    assert dsurf(*common, "--data-placement", "stream")[0] == 0
    whole = read_surface("s.h5")
    rc, out, err = dsurf(*common, "--overwrite", "--data-placement", "host")
    assert rc == 0, err
    import h5py

    with h5py.File("s.h5", "r+") as f:  # as if stopped after the first two chunks
        done = f["done"][()].reshape(-1)
        done[8:] = 0
        f["done"][...] = done.reshape(f["done"].shape)
    rc, out, err = dsurf(*common, "--resume", "--data-placement", "stream")
    assert rc == 0, err  # the streamed data's hash is the materialised data's
    resumed = read_surface("s.h5")
    for key in whole.metrics:
        np.testing.assert_allclose(resumed.metrics[key], whole.metrics[key], rtol=1e-7, atol=0)
    assert set(resumed.timings["placement"]) == {b"host", b"stream"}


def test_a_streamed_dataset_is_read_once_per_pass(tiny, datasets):
    """K points in one pass: each item is read once per pass over the data, not once per point."""
    import datasets_mod

    model = tiny.model()
    directions = make_directions(base_tensors(model, "weights"), 2, "filter", "biasbn", 0)
    streamed = StreamedSamples(datasets_mod.Counted())
    evaluator = SurfaceEvaluator(model, directions, streamed, batch_size=8, vmap="on", points_per_pass=6)
    evaluator.evaluate(np.zeros((1, 2)))  # (the plan, the targets: read once)
    before = datasets_mod.Counted.reads
    evaluator.evaluate(np.random.default_rng(0).normal(size=(6, 2)))
    assert datasets_mod.Counted.reads - before == len(streamed)
    in_memory = SurfaceEvaluator(model, directions, tiny.data(), batch_size=8, vmap="on", points_per_pass=6)
    offsets = np.random.default_rng(1).normal(size=(6, 2))
    want, got = in_memory.evaluate(offsets), evaluator.evaluate(offsets)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-7, atol=0)


def test_a_dataset_whose_items_change_is_refused_when_streamed(dsurf, tiny, datasets):
    args = ["run", "--model", tiny.spec("model"), "--data", datasets("augmented"), "--x", "-1:1:3", "--no-plot"]
    rc, out, err = dsurf(*args, "--data-placement", "stream")
    assert_one_line_error(rc, out, err, "differ from one read to the next", "--data-placement host")
    rc, out, err = dsurf(*args, "--data-placement", "host", "--out", "host.h5")  # read once: the same at every point
    assert rc == 0, err


def test_auto_streams_a_dataset_too_large_for_host_memory(tiny, datasets, monkeypatch):
    import datasets_mod

    spec = datasets("dataset")
    assert isinstance(problem_module.load_data(spec, None), Samples)
    nbytes = problem_module.load_data(spec, None).nbytes
    monkeypatch.setattr(problem_module, "host_memory_available", lambda: nbytes)  # half of it is too little
    streamed = problem_module.load_data(spec, None, workers=1)
    assert isinstance(streamed, StreamedSamples) and streamed.workers == 1
    assert len(streamed) == len(datasets_mod.Counted())
    assert isinstance(problem_module.load_data(spec, None, placement="host"), Samples)
    assert isinstance(problem_module.load_data(tiny.spec("data"), None), Samples)  # tensors are in memory already
    assert len(problem_module.load_data(spec, 5)) == 5


def test_streamed_samples_hash_as_materialised(tiny):
    x, y = tiny.data()
    samples = Samples(x, y)
    streamed = StreamedSamples(SamplesDataset(samples))
    assert streamed.content_sha256() == samples.content_sha256()
    assert torch.equal(streamed.targets, y)
    keyword = Samples({"input_ids": torch.arange(40).reshape(10, 4), "mask": torch.ones(10, 4)}, torch.arange(40).reshape(10, 4))
    assert StreamedSamples(SamplesDataset(keyword)).content_sha256() == keyword.content_sha256()
    assert StreamedSamples(SamplesDataset(keyword), limit=3).content_sha256() == keyword.slice(0, 3).content_sha256()


@pytest.mark.parametrize(
    "flag,value,needles",
    [("--data-placement", "disk", ["--data-placement", "auto, device, host, stream"]), ("--workers", "-1", ["--workers"])],
)
def test_bad_placement_flags(dsurf, tiny, flag, value, needles):
    rc, out, err = dsurf("run", "--model", tiny.spec("model"), "--data", tiny.spec("data"), flag, value)
    assert_one_line_error(rc, out, err, *needles)


@pytest.mark.parametrize(
    "environ,ranks,expected",
    [
        ({"OMP_NUM_THREADS": "3"}, 4, (3, "OMP_NUM_THREADS")),
        ({"OMP_NUM_THREADS": "4,2"}, 1, (4, "OMP_NUM_THREADS")),
        ({"SLURM_CPUS_PER_TASK": "5"}, 2, (5, "SLURM_CPUS_PER_TASK")),
        ({"OMP_NUM_THREADS": "2", "SLURM_CPUS_PER_TASK": "5"}, 2, (2, "OMP_NUM_THREADS")),
        ({"OMP_NUM_THREADS": "zero"}, 10**6, (1, None)),  # not a number: the share, at least one
    ],
)
def test_threads_per_rank(environ, ranks, expected):
    threads, source = threads_per_rank(ranks, environ)
    assert threads == expected[0]
    assert source == expected[1] if expected[1] else "cores" in source


def test_threads_are_printed_and_recorded(dsurf, tiny, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    try:
        rc, out, err = dsurf("run", "--model", tiny.spec("model"), "--data", tiny.spec("data"), "--x", "-1:1:3",
                             "--no-plot", "--out", "t.h5")  # fmt: skip
        assert rc == 0, err
        assert "1 CPU thread(s) per rank (OMP_NUM_THREADS)" in err
        assert set(read_surface("t.h5").timings["threads"]) == {1}
        rc, out, err = dsurf("info", "t.h5")
        assert "1 thread(s), data on the device" in out
    finally:
        torch.set_num_threads(before)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_placements_on_the_gpu_equal_the_cpu(dsurf, tiny, datasets):
    """On a GPU: the data on the device, copied from pinned host memory per batch, and streamed through
    loader processes into pinned memory all give the CPU's surface."""
    common = ["run", "--model", tiny.spec("model"), "--data", datasets("dataset"), "--x", "-1:1:4", "--y", "-1:1:3",
              "--batch-size", "7", "--no-plot"]  # fmt: skip
    assert dsurf(*common, "--device", "cpu", "--out", "cpu.h5")[0] == 0
    want = read_surface("cpu.h5").metrics
    for placement in ("device", "host", "stream"):
        rc, out, err = dsurf(*common, "--device", "cuda", "--data-placement", placement, "--workers", "2", "--out", f"{placement}.h5")
        assert rc == 0, err
        got = read_surface(f"{placement}.h5")
        assert set(got.timings["placement"]) == {placement.encode()}
        for key in want:
            np.testing.assert_allclose(got.metrics[key], want[key], rtol=1e-5, err_msg=f"{placement} {key}")


@pytest.mark.parametrize(
    "environ,expected",
    [({}, 1), ({"OMPI_COMM_WORLD_LOCAL_SIZE": "4"}, 4), ({"MPI_LOCALNRANKS": "3"}, 3), ({"SLURM_NTASKS_PER_NODE": "2(x3)"}, 2)],
)
def test_ranks_on_node(environ, expected):
    from distributed_surface.engine.runtime import ranks_on_node

    assert ranks_on_node(environ) == expected


def test_auto_shares_host_memory_among_the_ranks_of_a_node(tiny, datasets, monkeypatch):
    spec = datasets("dataset")
    nbytes = problem_module.load_data(spec, None).nbytes
    monkeypatch.setattr(problem_module, "host_memory_available", lambda: 3 * nbytes)
    assert isinstance(problem_module.load_data(spec, None), Samples)
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "2")  # each rank may hold 3/4 of it: too little
    assert isinstance(problem_module.load_data(spec, None), StreamedSamples)
