"""Shared fixtures: a tiny CNN with BatchNorm and a tiny data set, written as a module file on disk so
that the command line can import them (``--model path/tiny.py:model``), and ``dsurf`` run in-process."""

from __future__ import annotations

import importlib.util
import os
import sys
import textwrap
import warnings

import pytest

from distributed_surface import cli
from helpers import TINY_MODULE


# Threads as torch chooses them, whatever else the machine is doing: a run that took threads away for
# another process's work would sum in another order than its neighbour test's run (tests/test_load.py
# checks that choice on its own).
os.environ["DSURF_THREADS"] = "torch"


@pytest.fixture(scope="session", autouse=True)
def example_cache(tmp_path_factory):
    """One trained example per test run: every test, and every process a test starts (the environment
    is inherited), shares one model cache, so the built-in example is trained once."""
    cache = tmp_path_factory.mktemp("example_cache")
    before = os.environ.get("DSURF_CACHE")
    os.environ["DSURF_CACHE"] = str(cache)
    yield cache
    if before is None:
        os.environ.pop("DSURF_CACHE", None)
    else:
        os.environ["DSURF_CACHE"] = before


@pytest.fixture
def tiny(tmp_path):
    """The tiny problem module, on disk in tmp_path and imported. ``tiny.spec("model")`` is the import
    string of one of its callables."""
    path = tmp_path / "tiny.py"
    path.write_text(textwrap.dedent(TINY_MODULE))
    name = f"_dsurf_test_tiny_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.path = path
    module.spec = lambda fn: f"{path}:{fn}"
    yield module
    sys.modules.pop(name, None)


@pytest.fixture
def dsurf(capsys, monkeypatch, tmp_path):
    """Run ``dsurf ARGS`` in-process in tmp_path; returns (exit code, stdout, stderr). Warnings count as
    stderr output, as they would on a terminal."""
    monkeypatch.chdir(tmp_path)

    def call(*args):
        capsys.readouterr()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rc = cli.main([str(a) for a in args])
        out, err = capsys.readouterr()
        for w in caught:
            err += f"{w.category.__name__}: {w.message}\n"
        return rc, out, err

    return call


@pytest.fixture
def run_args(tiny):
    """The flags of a tiny run of the tiny problem (add --x/--y/--out ...)."""
    return ["run", "--model", tiny.spec("model"), "--data", tiny.spec("data"), "--no-plot", "--no-progress"]


@pytest.fixture
def surface_2d(tiny, dsurf, run_args, tmp_path):
    """A complete 3x4 surface of the tiny problem at tmp_path/s2.h5."""
    rc, out, err = dsurf(
        *run_args, "--x", "-1:1:3", "--y", "-0.5:0.5:4", "--out", "s2.h5", "--chunk-size", "5"
    )
    assert rc == 0, err
    return tmp_path / "s2.h5"


@pytest.fixture
def surface_1d(tiny, dsurf, run_args, tmp_path):
    rc, out, err = dsurf(*run_args, "--x", "-1:1:5", "--out", "s1.h5", "--chunk-size", "2")
    assert rc == 0, err
    return tmp_path / "s1.h5"
