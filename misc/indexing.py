"""Pixel-pair indexing for inter-pixel relations, and the random walk that propagates CAMs.

`PathIndex` enumerates, for every pixel of a feature map, the neighbours within `radius` in one
half-plane (each unordered pair once) and the pixels on the straight path between them; IRN's class
boundary map turns into an affinity by taking the maximum boundary score along that path.

`propagate_to_edge` is IRNet's random walk. The reference builds the dense N x N transition matrix
and squares it `exp_times` times (N = h*w: 11,750 for a 375x500 image at stride 4, i.e. 0.5 GB per
matrix and ~10^13 flops). Here the same transition is applied to the CAMs 2**exp_times times through
its sparse structure (69 non-zeros a row at radius 5), which gives the same result up to float
rounding with memory linear in N.

How the walk is applied. 94x125 map, 2^8 steps, CPU time on an otherwise idle 2-core AMD EPYC with
1 and 2 torch threads, best of 5; error = max |out - exact| / max |exact| against a float64 walk:

    method                                           C=3 (1/2 thr)   C=21 (1/2 thr)   error
    68 shifted multiply-adds a step, float32, fresh   0.28 / 0.28 s   1.51 / 0.93 s   2-3e-4
      allocations (the first version)
    69 addcmul_ a step into a zero-padded buffer,     0.19 / 0.14 s   1.03 / 0.67 s   3e-15
      float64, no allocation
    CSR matrix (int32 indices) @ (N, C), float32      0.15 / 0.08 s   0.31 / 0.17 s   0.7-2e-4
    CSR matrix (int32 indices) @ (N, C), float64      0.14 / 0.08 s   0.51 / 0.28 s   4e-8 (float32 output)

The float64 CSR product is kept (building the matrix takes 0.02-0.03 s of that). Float32 is not
accurate enough: rounding the weights leaves T's columns summing to 1 +- 1e-7 and 256 steps grow that
to 1-3e-4 of the maximum (the reference's own float32 squarings err by a few 1e-5). One sparse
product a step is also 256 kernel calls per image instead of ~17,700, which matters on CUDA (cuSPARSE;
launch overhead would dominate the shift versions) and on a loaded CPU: with two OpenMP threads
sharing the cores with other processes, every small op waits at a barrier; there the shift versions
took 0.5-0.9 s at C=3 and together over two minutes at C=21, the CSR product 0.25 s and 0.9-1.2 s. Peak memory is
about 3 kB a pixel (the matrix build's temporaries; 37 MB at 94x125), against 0.55 GB for one dense
float32 N x N matrix.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def _search_directions(radius: int) -> list[tuple[int, int]]:
    """Offsets (dy, dx) of the half-plane neighbours within `radius`, in the reference's order."""
    directions = [(0, dx) for dx in range(1, radius)]
    for dy in range(1, radius):
        for dx in range(-radius + 1, radius):
            if dx * dx + dy * dy < radius * radius:
                directions.append((dy, dx))
    return directions


def _path_to(direction: tuple[int, int]) -> list[list[int]]:
    """Grid cells within distance 1 of the segment from (0, 0) to `direction`, farthest first.

    The destination comes first; ties keep raster order (Python's sort is stable), as in the reference.
    """
    dy, dx = direction
    length_sq = dy * dy + dx * dx
    cells = []
    for y in range(min(0, dy), max(0, dy) + 1):
        for x in range(min(0, dx), max(0, dx) + 1):
            # squared distance of (y, x) from the line through the origin along `direction`
            if (dy * x - dx * y) ** 2 / length_sq < 1:
                cells.append([y, x])
    cells.sort(key=lambda cell: -abs(cell[0]) - abs(cell[1]))
    return cells


class PathIndex:
    """Index arrays of the pixel pairs within `radius` on a map of `default_size` (h, w).

    Attributes (equal to the reference's):
      radius_floor  ceil(radius) - 1: the margin that sources keep from the left/right/bottom edges
      search_paths  list over path lengths of int arrays (paths, length, 2): path cells per direction
      search_dst    (P, 2) offset of each direction's destination, directions grouped by path length
      path_indices  list over path lengths of int64 arrays (paths, length, sources): flat map indices
      src_indices   (sources,) flat index of each source pixel
      dst_indices   (P, sources) flat index of each destination
    """

    def __init__(self, radius: int = 5, default_size: Sequence[int] | None = None):
        self.radius = radius
        self.radius_floor = int(np.ceil(radius) - 1)
        by_length: dict[int, list] = {}
        for direction in _search_directions(int(radius)):
            path = _path_to(direction)
            by_length.setdefault(len(path), []).append(path)
        self.search_paths = [np.asarray(by_length[length]) for length in sorted(by_length)]
        self.search_dst = np.concatenate([paths[:, 0] for paths in self.search_paths], axis=0)
        if default_size is not None:
            self.path_indices, self.src_indices, self.dst_indices = self.get_path_indices(default_size)

    def get_path_indices(self, size: Sequence[int]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        height, width = int(size[0]), int(size[1])
        flat = np.arange(height * width, dtype=np.int64).reshape(height, width)
        rf = self.radius_floor
        crop_h, crop_w = height - rf, width - 2 * rf

        def window(dy: int, dx: int) -> np.ndarray:
            return flat[dy:dy + crop_h, rf + dx:rf + dx + crop_w].reshape(-1)

        path_indices = [np.array([[window(dy, dx) for dy, dx in path] for path in paths])
                        for paths in self.search_paths]
        src_indices = window(0, 0)
        dst_indices = np.concatenate([indices[:, 0] for indices in path_indices], axis=0)
        return path_indices, src_indices, dst_indices


def edge_to_affinity(edge: torch.Tensor, path_indices: Sequence[torch.Tensor | np.ndarray]) -> torch.Tensor:
    """Affinity of each pixel pair = 1 - max boundary score along its path.

    edge (B, ...) with B maps flattened to (B, h*w); returns (B, P, sources).
    """
    edge = edge.reshape(edge.shape[0], -1)
    affinities = []
    for indices in path_indices:
        indices = torch.as_tensor(indices, device=edge.device)
        n_paths, length, n_src = indices.shape
        on_path = edge.index_select(-1, indices.reshape(-1)).view(edge.shape[0], n_paths, length, n_src)
        affinities.append(1 - on_path.max(dim=2).values)
    return torch.cat(affinities, dim=1)


def _direction_affinities(edge: torch.Tensor, radius: int) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """Affinity maps A_d (D, h, w): A_d[p] = 1 - max edge on the path from p to p + d, 0 where p + d
    leaves the map (the reference pads the edge map with 1 there)."""
    height, width = edge.shape
    padded = F.pad(edge[None, None], (radius, radius, 0, radius), value=1.0)[0, 0]
    directions, maps = [], []
    for paths in PathIndex(radius).search_paths:
        for path in paths:
            on_path = torch.stack([padded[dy:dy + height, radius + dx:radius + dx + width] for dy, dx in path])
            maps.append(1 - on_path.max(dim=0).values)
            directions.append((int(path[0][0]), int(path[0][1])))
    return directions, torch.stack(maps)


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """out[..., y, x] = x[..., y + dy, x + dx], zero outside."""
    height, width = x.shape[-2:]
    out = torch.zeros_like(x)
    if abs(dy) >= height or abs(dx) >= width:                 # shifted off the map (negative slices would wrap)
        return out
    ys, yd = (slice(dy, height), slice(0, height - dy)) if dy >= 0 else (slice(0, height + dy), slice(-dy, height))
    xs, xd = (slice(dx, width), slice(0, width - dx)) if dx >= 0 else (slice(0, width + dx), slice(-dx, width))
    out[..., yd, xd] = x[..., ys, xs]
    return out


def transition_matrix(edge: torch.Tensor, radius: int = 5, beta: float = 10) -> torch.Tensor:
    """The random walk's transition T of the (h, w) boundary map `edge`, transposed, as a sparse CSR matrix.

    T[i, j] = W[i, j] / sum_k W[k, j] with W = affinity ** beta (self-affinity 1), so T's columns sum to
    one; the result is T^T (N, N), N = h * w, with about 69 non-zeros a row at radius 5, so that the
    walk of maps y (N, C) is `T^T @ y`. Built in float64 on `edge`'s device.
    """
    edge = edge.to(torch.float64)
    height, width = edge.shape
    n_pixels = height * width
    directions, aff = _direction_affinities(edge, radius)
    weights = aff.pow_(beta)                                              # (D, h, w): W[p, p + d]
    # every offset o, with where to read W[p, p + o]: W_d at p for +d, W_d at p - d for -d, 1 for 0
    sources = {(0, 0): None}
    for i, (dy, dx) in enumerate(directions):
        sources[(dy, dx)], sources[(-dy, -dx)] = (i, False), (i, True)
    offsets = sorted(sources)            # raster order, so each row's column indices come out sorted
    maps = edge.new_empty((len(offsets), height, width))                  # (O, h, w): W[j, j + o] at j
    for k, offset in enumerate(offsets):
        if sources[offset] is None:
            maps[k] = 1
        else:
            i, backwards = sources[offset]
            maps[k] = _shift(weights[i], *offset) if backwards else weights[i]
    del aff, weights
    maps /= maps.sum(dim=0)                                               # T[j + o, j] = W[j, j + o] / column sum

    ys = torch.arange(height, device=edge.device).view(1, height, 1)
    xs = torch.arange(width, device=edge.device).view(1, 1, width)
    dys, dxs = (torch.tensor(v, device=edge.device).view(-1, 1, 1) for v in zip(*offsets))
    inside = ((ys + dys >= 0) & (ys + dys < height) & (xs + dxs >= 0) & (xs + dxs < width))
    inside = inside.view(len(offsets), n_pixels).T                        # (N, O), row j: its valid offsets
    index_dtype = torch.int32 if n_pixels * len(offsets) < 2 ** 31 else torch.int64
    columns = (torch.arange(n_pixels, device=edge.device, dtype=index_dtype).view(-1, 1)
               + (dys * width + dxs).view(1, -1).to(index_dtype))[inside]
    values = maps.view(len(offsets), n_pixels).T[inside]
    row_starts = F.pad(inside.sum(dim=1).cumsum(dim=0), (1, 0)).to(index_dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='Sparse CSR tensor support is in beta')
        return torch.sparse_csr_tensor(row_starts, columns, values, (n_pixels, n_pixels), check_invariants=False)


def transition_operator(edge: torch.Tensor, radius: int = 5, beta: float = 10):
    """The random walk's column-normalised transition as a function y -> y @ T on (C, h, w) maps.

    T[i, j] = W[i, j] / sum_k W[k, j], W = affinity ** beta with the self-affinity 1 on the diagonal.
    Computed in float64; returns maps of y's shape and dtype.
    """
    height, width = edge.shape
    transposed = transition_matrix(edge, radius, beta)

    def step(y: torch.Tensor) -> torch.Tensor:
        flat = y.reshape(-1, height * width).T.to(torch.float64).contiguous()     # (N, C)
        return (transposed @ flat).T.reshape(y.shape).to(y.dtype)

    return step


def propagate_to_edge(x: torch.Tensor, edge: torch.Tensor, radius: int = 5, beta: float = 10,
                      exp_times: int = 8) -> torch.Tensor:
    """Random walk of `x` (C, h, w) on the boundary map `edge` (h, w): (x * (1 - edge)) @ T^(2^exp_times).

    Returns (C, 1, h, w) in x's floating dtype (float32 for integer x), on x's device; equal to the
    reference's dense computation up to float rounding (the walk runs in float64).
    """
    x = torch.as_tensor(x)
    out_dtype = x.dtype if x.is_floating_point() else torch.float32
    height, width = x.shape[-2:]
    edge = torch.as_tensor(edge, device=x.device).to(torch.float64).reshape(height, width)
    transposed = transition_matrix(edge, radius, beta)                    # T^T, (N, N) sparse
    y = (x.reshape(-1, height, width).to(torch.float64) * (1 - edge)).reshape(-1, height * width)
    y = walk(transposed, y.T.contiguous(), 2 ** exp_times)                # (N, C): one row a pixel
    return y.T.reshape(-1, 1, height, width).to(out_dtype)


def walk(transposed: torch.Tensor, y: torch.Tensor, steps: int) -> torch.Tensor:
    """`steps` random-walk steps of maps y (N, C) (one row a pixel) under T^T (N, N) sparse: (T^T)^steps @ y.

    Equal to y^T @ T^steps in the column-normalised convention; y in T^T's dtype (float64).
    """
    for _ in range(steps):
        y = transposed @ y
    return y


# ----------------------------------------------------------------------------- AffinityNet (PSA) pairs and walk

def pair_indices(radius: int, size: int | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """AffinityNet's pixel pairs on an (h, w) map (an int means h = w): the reference's `get_indices_of_pairs`.

    Sources are the pixels of rows [0, h - r + 1) and columns [r - 1, w - r + 1) (r = radius), so that every
    partner lies inside the map; pixels of the bottom r - 1 rows and of the r - 1 columns at either side are
    never sources (they are only reached as partners). Returns src (S,) and dst (P, S), int64 flat indices,
    dst[d] = src shifted by the d-th offset of `_search_directions` (P = 34 at radius 5).
    """
    height, width = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    margin = int(radius) - 1
    crop_h, crop_w = height - margin, width - 2 * margin
    if crop_h < 1 or crop_w < 1:
        raise ValueError(f'a {height}x{width} map has no pair sources at radius {radius} '
                         f'(needs width >= {2 * margin + 1} and height >= {margin + 1})')
    flat = np.arange(height * width, dtype=np.int64).reshape(height, width)

    def window(dy: int, dx: int) -> np.ndarray:
        return flat[dy:dy + crop_h, margin + dx:margin + dx + crop_w].reshape(-1)

    src = window(0, 0)
    dst = np.stack([window(dy, dx) for dy, dx in _search_directions(int(radius))])
    return src, dst


def pairs_transition(aff: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, n_pixels: int,
                     beta: float) -> torch.Tensor:
    """The transition of a walk on explicit pairs, transposed: T^T (N, N) sparse CSR, float64.

    W is the symmetric matrix with unit diagonal and W[s, d] = W[d, s] = aff[p, k] ** beta for the pair
    (s = src[k], d = dst[p, k]); T[i, j] = W[i, j] / sum_k W[k, j] (columns sum to one), so T^T = D^-1 W
    (rows of W normalised). aff, dst (P, S), src (S,); built on aff's device. No pair may repeat (the
    reference's dense matrix would sum duplicates; `pair_indices` has none).
    """
    device = aff.device
    weights = aff.to(torch.float64).reshape(-1).pow(beta)
    src = torch.as_tensor(src, device=device).to(torch.int64).reshape(1, -1).expand(dst.shape).reshape(-1)
    dst = torch.as_tensor(dst, device=device).to(torch.int64).reshape(-1)
    diagonal = torch.arange(n_pixels, device=device)
    rows = torch.cat([src, dst, diagonal])
    cols = torch.cat([dst, src, diagonal])
    values = torch.cat([weights, weights, weights.new_ones(n_pixels)])
    row_sums = torch.zeros(n_pixels, dtype=torch.float64, device=device).index_add_(0, rows, values)
    values = values / row_sums[rows]
    order = torch.argsort(rows * n_pixels + cols)
    row_starts = F.pad(torch.bincount(rows, minlength=n_pixels).cumsum(0), (1, 0))
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='Sparse CSR tensor support is in beta')
        return torch.sparse_csr_tensor(row_starts, cols[order], values[order], (n_pixels, n_pixels),
                                       check_invariants=False)


def affinity_random_walk(aff, src, dst, n_pixels: int, scores, beta: float = 8, logt: int = 8) -> torch.Tensor:
    """AffinityNet's random walk: scores (C, N) @ T^(2^logt), T = column-normalised W, W[i, j] = aff ** beta.

    aff (P, S) affinities of the pairs (src (S,), dst (P, S)) of `pair_indices` on a map of N = n_pixels
    pixels. The reference builds W densely (unit diagonal, symmetric) and squares T logt times in float32;
    here T^T is sparse (about 54 non-zeros a row at radius 5) and applied 2^logt times in float64, which
    gives the same result up to the reference's float32 rounding. numpy or torch in; returns a float32
    tensor (C, N) on aff's device.
    """
    aff = torch.as_tensor(aff)
    device = aff.device
    src, dst = torch.as_tensor(src, device=device), torch.as_tensor(dst, device=device)
    scores = torch.as_tensor(scores, device=device)
    transposed = pairs_transition(aff, src, dst.reshape(-1, src.numel()), int(n_pixels), beta)
    y = scores.reshape(-1, int(n_pixels)).to(torch.float64).T.contiguous()      # (N, C)
    threads = torch.get_num_threads()
    if device.type == 'cpu':
        # Stride-8 maps are small (N ~ 3,000 on VOC): one thread does each product in ~0.1 ms, while with
        # several, on a loaded machine, every one of the 2^logt products waits at a barrier (demo, 2 cores:
        # 0.03 s for 256 steps with one thread, 0.7-1.4 s with two).
        torch.set_num_threads(1)
    try:
        return walk(transposed, y, 2 ** int(logt)).T.to(torch.float32).contiguous()
    finally:
        torch.set_num_threads(threads)
