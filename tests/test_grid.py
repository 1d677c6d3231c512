"""Grid arithmetic: axis parsing, flat index -> (i, j) = divmod(k, ny), chunks and pending chunks."""

from __future__ import annotations

import numpy as np
import pytest

from distributed_surface.core.grid import Axis, Grid, chunk_bounds, default_chunk_size, guided_chunks, pending_chunks


@pytest.mark.parametrize(
    "text,expected",
    [
        ("-1:1:3", [-1.0, 0.0, 1.0]),
        ("0:0:1", [0.0]),
        ("-0.5:0.5:4", [-0.5, -1 / 6, 1 / 6, 0.5]),
        ("1e-1:2e-1:2", [0.1, 0.2]),
        (" -2 : 2 : 5 ", [-2.0, -1.0, 0.0, 1.0, 2.0]),
    ],
)
def test_axis_parse_good(text, expected):
    axis = Axis.parse(text)
    assert axis.num == len(expected)
    assert axis.coordinates.dtype == np.float64
    np.testing.assert_allclose(axis.coordinates, expected, rtol=0, atol=1e-15)
    assert axis.coordinates[0] == axis.min and axis.coordinates[-1] == axis.max  # inclusive


@pytest.mark.parametrize(
    "text,message",
    [
        ("-1:1", "MIN:MAX:NUM"),
        ("-1:1:3:4", "MIN:MAX:NUM"),
        ("", "MIN:MAX:NUM"),
        ("a:1:3", "number"),
        ("-1:b:3", "number"),
        ("-1:1:x", "whole number"),
        ("-1:1:2.5", "whole number"),
        ("-1:1:0", "at least 1"),
        ("-1:1:-4", "at least 1"),
        ("1:-1:3", "MIN must not exceed MAX"),
        ("nan:1:3", "finite"),
        ("-inf:1:3", "finite"),
        ("-1:1:1", "single point"),
        ("0:0:5", "5 points need MIN < MAX"),
        ("0.5:0.5:2", "need MIN < MAX"),
    ],
)
def test_axis_parse_bad(text, message):
    with pytest.raises(ValueError, match=message):
        Axis.parse(text)


def test_1d_offsets():
    grid = Grid(Axis.parse("-1:1:5"))
    assert grid.ndim == 1 and grid.shape == (5,) and grid.size == 5
    offsets = grid.offsets(np.array([0, 3, 4]))
    assert offsets.shape == (3, 1) and offsets.dtype == np.float64
    np.testing.assert_array_equal(offsets[:, 0], grid.x.coordinates[[0, 3, 4]])


def test_2d_offsets_row_major():
    grid = Grid(Axis.parse("-1:1:3"), Axis.parse("-0.5:0.5:4"))
    assert grid.ndim == 2 and grid.shape == (3, 4) and grid.size == 12
    offsets = grid.offsets(np.arange(12))
    assert offsets.shape == (12, 2)
    for k in range(12):
        i, j = divmod(k, 4)  # ny = 4, not nx
        assert offsets[k, 0] == grid.x.coordinates[i]
        assert offsets[k, 1] == grid.y.coordinates[j]
    # row-major: the same as a C-order ravel of the meshgrid with indexing="ij"
    xx, yy = np.meshgrid(grid.x.coordinates, grid.y.coordinates, indexing="ij")
    np.testing.assert_array_equal(offsets, np.stack([xx.ravel(), yy.ravel()], axis=1))
    # a subset, out of order
    np.testing.assert_array_equal(grid.offsets(np.array([11, 4])), [[1.0, 0.5], [0.0, -0.5]])


@pytest.mark.parametrize(
    "size,chunk,expected",
    [
        (12, 5, [(0, 5), (5, 10), (10, 12)]),
        (12, 4, [(0, 4), (4, 8), (8, 12)]),
        (3, 10, [(0, 3)]),
        (1, 1, [(0, 1)]),
        (0, 3, []),
    ],
)
def test_chunk_bounds(size, chunk, expected):
    bounds = chunk_bounds(size, chunk)
    assert bounds == expected
    covered = [k for start, stop in bounds for k in range(start, stop)]
    assert covered == list(range(size))


def test_chunk_bounds_rejects_zero():
    with pytest.raises(ValueError):
        chunk_bounds(5, 0)


def test_pending_chunks():
    done = np.zeros((3, 4), dtype=np.uint8)
    chunks = pending_chunks(done, 5)
    assert [c.tolist() for c in chunks] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]
    done.reshape(-1)[[0, 1, 2, 3, 4, 6, 11]] = 1  # chunk 0 done, chunk 1 partly, chunk 2 partly
    chunks = pending_chunks(done, 5)
    assert [c.tolist() for c in chunks] == [[5, 7, 8, 9], [10]]
    assert all(c.dtype.kind == "i" for c in chunks)
    done[:] = 1
    assert pending_chunks(done, 5) == []
    # row-major: done[i, j] is flat index i*ny + j
    done = np.zeros((3, 4), dtype=np.uint8)
    done[1, 2] = 1
    (chunk,) = pending_chunks(done, 12)
    assert 6 not in chunk.tolist() and len(chunk) == 11


def test_default_chunk_size_is_sane():
    for size in (1, 7, 12, 100, 10_000):
        for workers in (1, 4):
            c = default_chunk_size(size, workers)
            assert 1 <= c <= max(1, size)


def test_guided_chunks_shrink_to_single_points_and_cover_each_pending_point_once():
    done = np.zeros((51, 51), dtype=np.uint8)
    done.reshape(-1)[::7] = 1
    chunks = guided_chunks(done, workers=8, max_size=64)
    sizes = [len(c) for c in chunks]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] == 1 and max(sizes) <= 64
    assert sizes[0] == min(64, -(-np.count_nonzero(done == 0) // 16))
    assert [len(c) for c in guided_chunks(done, workers=64)][:2] == [18, 18]  # 2229 / 128, rounded up
    flat = np.concatenate(chunks)
    np.testing.assert_array_equal(flat, np.flatnonzero(done.reshape(-1) == 0))  # once each, in order
    assert guided_chunks(np.ones(5, dtype=np.uint8), workers=3) == []
    assert [len(c) for c in guided_chunks(np.zeros(3, dtype=np.uint8), workers=64)] == [1, 1, 1]
