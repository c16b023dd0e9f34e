"""Pixel-pair indexing for inter-pixel relations, and the random walk that propagates CAMs.

`PathIndex` enumerates, for every pixel of a feature map, the neighbours within `radius` in one
half-plane (each unordered pair once) and the pixels on the straight path between them; IRN's class
boundary map turns into an affinity by taking the maximum boundary score along that path.

`propagate_to_edge` is IRNet's random walk. The reference builds the dense N x N transition matrix
and squares it `exp_times` times (N = h*w: 11,750 for a 375x500 image at stride 4, i.e. 0.5 GB per
matrix and ~10^13 flops). Here the same transition is applied to the CAMs 2**exp_times times through
its sparse structure (69 non-zeros a row at radius 5), which gives the same result up to float
rounding with memory linear in N.
"""
from __future__ import annotations

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
    ys, yd = (slice(dy, height), slice(0, height - dy)) if dy >= 0 else (slice(0, height + dy), slice(-dy, height))
    xs, xd = (slice(dx, width), slice(0, width - dx)) if dx >= 0 else (slice(0, width + dx), slice(-dx, width))
    out[..., yd, xd] = x[..., ys, xs]
    return out


def transition_operator(edge: torch.Tensor, radius: int = 5, beta: float = 10):
    """The random walk's column-normalised transition as a function y -> y @ T on (C, h, w) maps.

    T[i, j] = W[i, j] / sum_k W[k, j], W = affinity ** beta with the self-affinity 1 on the diagonal.
    """
    directions, aff = _direction_affinities(edge, radius)
    weights = aff.pow(beta)                                               # (D, h, w), W[p, p + d]
    column_sum = 1 + weights.sum(0)
    for (dy, dx), w in zip(directions, weights):
        column_sum += _shift(w, -dy, -dx)                                 # W[p - d, p]
    inv_column_sum = 1 / column_sum

    def step(y: torch.Tensor) -> torch.Tensor:
        out = y.clone()
        for (dy, dx), w in zip(directions, weights):
            out += w * _shift(y, dy, dx)                                  # from p + d into p
            out += _shift(w * y, -dy, -dx)                                # from p - d into p
        return out * inv_column_sum

    return step


def propagate_to_edge(x: torch.Tensor, edge: torch.Tensor, radius: int = 5, beta: float = 10,
                      exp_times: int = 8) -> torch.Tensor:
    """Random walk of `x` (C, h, w) on the boundary map `edge` (h, w): (x * (1 - edge)) @ T^(2^exp_times).

    Returns (C, 1, h, w), equal to the reference's dense computation up to float rounding.
    """
    x = torch.as_tensor(x)
    edge = torch.as_tensor(edge, device=x.device).to(torch.float32)
    height, width = x.shape[-2:]
    edge = edge.reshape(height, width)
    walk = transition_operator(edge, radius, beta)
    y = x.reshape(-1, height, width).to(torch.float32) * (1 - edge)
    for _ in range(2 ** exp_times):
        y = walk(y)
    return y.view(-1, 1, height, width)
