"""misc.indexing: PathIndex geometry, edge_to_affinity, and propagate_to_edge against a dense random walk.

The dense reference here is built pixel by pixel from the definition (affinity of a pair within the
radius = 1 - max boundary score on the cells within distance 1 of the segment joining them, self
affinity 1), raised to beta, column-normalised and taken to the power 2**exp_times in float64: the
reference's computation, on maps small enough for an N x N matrix.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from misc.indexing import PathIndex, edge_to_affinity, propagate_to_edge, transition_matrix, transition_operator


# ----------------------------------------------------------------------------- dense reference

def half_plane_directions(radius: int) -> list[tuple[int, int]]:
    """All (dy, dx) with dy > 0 or (dy == 0, dx > 0) and dy^2 + dx^2 < radius^2, in any order."""
    return [(dy, dx) for dy in range(radius) for dx in range(-radius + 1, radius)
            if (dy > 0 or dx > 0) and dy * dy + dx * dx < radius * radius]


def cells_near_segment(dy: int, dx: int) -> set[tuple[int, int]]:
    """Cells of the box spanned by (0, 0) and (dy, dx) at distance < 1 from the line through both."""
    return {(y, x) for y in range(min(0, dy), max(0, dy) + 1) for x in range(min(0, dx), max(0, dx) + 1)
            if (dy * x - dx * y) ** 2 < dy * dy + dx * dx}


def dense_affinity(edge: np.ndarray, radius: int) -> np.ndarray:
    """(N, N) float64 affinity of an (h, w) boundary map, N = h * w, pixel by pixel."""
    height, width = edge.shape
    aff = np.eye(height * width)
    for y in range(height):
        for x in range(width):
            for dy, dx in half_plane_directions(radius):
                if not (0 <= y + dy < height and 0 <= x + dx < width):
                    continue
                a = 1 - max(edge[y + cy, x + cx] for cy, cx in cells_near_segment(dy, dx))
                aff[y * width + x, (y + dy) * width + x + dx] = aff[(y + dy) * width + x + dx, y * width + x] = a
    return aff


def dense_random_walk(x: np.ndarray, edge: np.ndarray, radius: int, beta: float, exp_times: int) -> np.ndarray:
    """(C, h, w) -> (C, 1, h, w): (x * (1 - edge)) @ T^(2^exp_times), T = column-normalised aff^beta."""
    channels, height, width = x.shape
    weights = dense_affinity(edge.astype(np.float64), radius) ** beta
    trans = weights / weights.sum(axis=0, keepdims=True)
    trans = np.linalg.matrix_power(trans, 2 ** exp_times)
    walked = (x.astype(np.float64) * (1 - edge)).reshape(channels, -1) @ trans
    return walked.reshape(channels, 1, height, width)


def relative_error(out: torch.Tensor, ref: np.ndarray) -> float:
    """max |out - ref| / max |ref|, as in the fidelity check."""
    return float(np.abs(out.double().numpy() - ref).max() / np.abs(ref).max())


# ----------------------------------------------------------------------------- PathIndex

@pytest.mark.parametrize('radius, n_directions', [(5, 34), (10, 152), (3, 12)])
def test_directions_fill_the_half_disc(radius: int, n_directions: int) -> None:
    index = PathIndex(radius=radius)
    dst = [tuple(int(v) for v in d) for d in index.search_dst]
    assert index.search_dst.shape == (n_directions, 2)
    assert len(set(dst)) == n_directions                      # each unordered pair of pixels once
    for dy, dx in dst:
        assert dy > 0 or (dy == 0 and dx > 0)
        assert dy * dy + dx * dx < radius * radius
    assert set(dst) == set(half_plane_directions(radius))
    assert index.radius_floor == radius - 1


@pytest.mark.parametrize('radius', [3, 5, 10])
def test_paths_run_from_destination_to_source(radius: int) -> None:
    index = PathIndex(radius=radius)
    lengths = [paths.shape[1] for paths in index.search_paths]
    assert lengths == sorted(lengths) and len(set(lengths)) == len(lengths)   # grouped by path length
    for paths in index.search_paths:
        for path in paths.tolist():
            dy, dx = path[0]
            assert [0, 0] in path                                              # the source is on its path
            assert len({tuple(c) for c in path}) == len(path)
            # farthest cell first, and the cells are those near the segment
            assert all(abs(c[0]) + abs(c[1]) <= abs(dy) + abs(dx) for c in path)
            assert {tuple(c) for c in path} == cells_near_segment(dy, dx)


@pytest.mark.parametrize('radius, size', [(5, (20, 37)), (10, (32, 32)), (3, (6, 9))])
def test_path_indices_shapes_and_values(radius: int, size: tuple[int, int]) -> None:
    height, width = size
    index = PathIndex(radius=radius, default_size=size)
    rf = radius - 1
    n_src = (height - rf) * (width - 2 * rf)
    n_dir = len(index.search_dst)
    assert index.src_indices.shape == (n_src,)
    assert index.dst_indices.shape == (n_dir, n_src)
    assert len(index.path_indices) == len(index.search_paths)
    assert sum(p.shape[0] for p in index.path_indices) == n_dir
    for indices, paths in zip(index.path_indices, index.search_paths):
        assert indices.shape == (paths.shape[0], paths.shape[1], n_src) and indices.dtype == np.int64
    # sources: rows [0, h - rf), columns [rf, w - rf); destination = source + (dy, dx)
    src_y, src_x = np.divmod(index.src_indices, width)
    assert src_y.min() == 0 and src_y.max() == height - rf - 1
    assert src_x.min() == rf and src_x.max() == width - rf - 1
    offsets = index.search_dst[:, 0:1] * width + index.search_dst[:, 1:2]
    np.testing.assert_array_equal(index.dst_indices, index.src_indices[None] + offsets)
    np.testing.assert_array_equal(np.concatenate([p[:, 0] for p in index.path_indices]), index.dst_indices)
    # every path cell stays on the map and within one row of the source's window
    for indices in index.path_indices:
        assert indices.min() >= 0 and indices.max() < height * width


# ----------------------------------------------------------------------------- edge_to_affinity

def test_edge_to_affinity_wall_blocks_pairs_across_it() -> None:
    height, width, wall = 10, 14, 7
    index = PathIndex(radius=5, default_size=(height, width))
    edge = torch.zeros(height, width)
    edge[:, wall] = 1
    aff = edge_to_affinity(edge[None], index.path_indices)
    assert aff.shape == (1, len(index.search_dst), index.src_indices.size)
    src_x = torch.from_numpy(index.src_indices % width)[None].expand(len(index.search_dst), -1)
    dst_x = torch.from_numpy(index.dst_indices % width)
    crosses = ((src_x - wall) * (dst_x - wall) <= 0)      # on opposite sides, or one end on the wall
    assert torch.equal(aff[0], (~crosses).float())

    aff = edge_to_affinity(torch.zeros(2, height, width), index.path_indices)
    assert aff.shape == (2, len(index.search_dst), index.src_indices.size) and bool((aff == 1).all())


def test_edge_to_affinity_takes_the_max_on_the_path() -> None:
    rng = np.random.default_rng(0)
    height, width, radius = 9, 13, 5
    edge = rng.random((height, width)).astype(np.float32)
    index = PathIndex(radius=radius, default_size=(height, width))
    aff = edge_to_affinity(torch.from_numpy(edge)[None], index.path_indices)[0].numpy()
    dense = dense_affinity(edge, radius)
    np.testing.assert_allclose(aff, dense[index.src_indices[None], index.dst_indices], rtol=0, atol=1e-7)


# ----------------------------------------------------------------------------- propagate_to_edge

@pytest.mark.parametrize('size, radius', [((7, 9), 5), ((3, 2), 5), ((11, 6), 3)])
def test_transition_matrix_is_the_transposed_dense_transition(size, radius: int) -> None:
    rng = np.random.default_rng(2)
    edge = rng.random(size) ** 2
    matrix = transition_matrix(torch.from_numpy(edge), radius=radius, beta=3)
    # a valid CSR tensor: column indices sorted and distinct in every row
    torch.sparse_csr_tensor(matrix.crow_indices(), matrix.col_indices(), matrix.values(), matrix.shape,
                            check_invariants=True)
    weights = dense_affinity(edge, radius) ** 3
    np.testing.assert_allclose(matrix.to_dense().numpy(), (weights / weights.sum(axis=0)).T, rtol=1e-12, atol=0)

    y = torch.rand(2, *size)
    step = transition_operator(torch.from_numpy(edge), radius=radius, beta=3)(y)
    assert step.shape == y.shape and step.dtype == y.dtype
    np.testing.assert_allclose(step.reshape(2, -1).numpy(), y.reshape(2, -1).double().numpy()
                               @ (weights / weights.sum(axis=0)), rtol=1e-6)



@pytest.mark.parametrize('size, radius, beta, exp_times, sharpness', [
    ((7, 9), 5, 10, 8, 1),
    ((12, 10), 5, 10, 8, 1),
    ((12, 10), 5, 10, 8, 4),          # mostly low boundary scores: the walk mixes across the map
    ((12, 10), 3, 2, 3, 1),
    ((9, 11), 4, 5, 5, 3),
    ((4, 3), 5, 10, 8, 2),            # smaller than the radius
])
def test_propagate_to_edge_matches_dense(size, radius, beta, exp_times, sharpness) -> None:
    rng = np.random.default_rng(sum(size) + radius + exp_times + sharpness)
    x = rng.random((3,) + size).astype(np.float32)
    edge = (rng.random(size) ** sharpness).astype(np.float32)
    out = propagate_to_edge(torch.from_numpy(x), torch.from_numpy(edge), radius=radius, beta=beta,
                            exp_times=exp_times)
    ref = dense_random_walk(x, edge, radius, beta, exp_times)
    assert out.shape == (3, 1) + size and out.dtype == torch.float32
    assert bool((out >= 0).all())
    assert relative_error(out, ref) < 1e-4


def test_propagate_to_edge_accepts_arrays_and_float64() -> None:
    rng = np.random.default_rng(1)
    x = rng.random((2, 8, 8))
    edge = rng.random((8, 8)) ** 3
    out = propagate_to_edge(torch.from_numpy(x), edge, radius=5, beta=10, exp_times=8)
    assert out.dtype == torch.float64 and out.shape == (2, 1, 8, 8)
    assert relative_error(out, dense_random_walk(x, edge, 5, 10, 8)) < 1e-10


def test_propagate_to_edge_zero_edge_keeps_uniform_maps() -> None:
    x = torch.full((4, 15, 17), 0.3)
    out = propagate_to_edge(x, torch.zeros(15, 17))
    torch.testing.assert_close(out, torch.full((4, 1, 15, 17), 0.3), rtol=1e-5, atol=0)


def test_propagate_to_edge_boundary_wall_stops_the_walk() -> None:
    height, width, wall = 10, 16, 8
    edge = torch.zeros(height, width)
    edge[:, wall] = 1
    x = torch.zeros(2, height, width)
    x[0, :, :wall] = torch.rand(height, wall)
    x[1, :, wall + 1:] = 1
    out = propagate_to_edge(x, edge)[:, 0]
    assert bool((out[0, :, wall:] == 0).all()) and bool((out[0, :, :wall] > 0).all())
    assert bool((out[1, :, :wall + 1] == 0).all())
    # no boundary on the right: the walk there averages a constant, and stays constant
    torch.testing.assert_close(out[1, :, wall + 1:], torch.ones(height, width - wall - 1), rtol=1e-5, atol=0)


def test_propagate_to_edge_all_boundary_gives_zero() -> None:
    out = propagate_to_edge(torch.rand(3, 6, 7), torch.ones(6, 7), exp_times=2)
    assert bool((out == 0).all())


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_propagate_to_edge_on_cuda_matches_cpu() -> None:
    x, edge = torch.rand(21, 30, 40), torch.rand(30, 40) ** 4
    out = propagate_to_edge(x.cuda(), edge.cuda())
    assert out.device.type == 'cuda'
    ref = propagate_to_edge(x, edge)
    assert float((out.cpu() - ref).abs().max() / ref.abs().max()) < 1e-4
