"""Training crops rendered on the training device from the decoded image and the sample's drawn recipe.

On a GPU run the loader workers need not resize or colour-jitter: a *deferred* sample (misc/device_input.py)
carries the decoded (H, W, 3) uint8 image ('img_src'), the draws that today's CPU pipeline makes ('img_recipe',
'img_jitter') and, where the crop's padding must become 0 after normalisation, its 'img_valid' rectangle.
`render_batch` then makes, on the device, the (N, crop, crop, 3) uint8 crops that a compact sample would have
held, bit for bit: Pillow's bicubic resize (misc.pil_resample), the horizontal flip, torchvision's colour jitter
as Pillow computes it (misc.pil_color), the crop padded with 0. Without jitter only the crop's window of the
resized image is computed.

A recipe is one int64 row: (width, height) after the resize, flip (0/1), the 8 numbers of
`misc.imutils.random_crop_box` on the resized (and flipped) image, the crop size. A jitter row is float64:
the adjustments' order (torchvision's indices 0 brightness, 1 contrast, 2 saturation, 3 hue; -1 pads) then their
factors in that order. The recipe's order of operations is resize, flip, jitter, crop: a pipeline that jitters
first and flips its crop (AffinityNet's) is the same recipe with the box mirrored (`mirrored_box`), because
every jitter step is pointwise or (contrast) uses a mean over the whole image, which a flip does not change.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from misc.pil_color import apply_jitter
from misc.pil_resample import resize_bicubic

RECIPE_LENGTH = 12
JITTER_LENGTH = 8


def encode_recipe(size: Sequence[int], flip: bool, box: Sequence[int], crop: int) -> torch.Tensor:
    """(12,) int64 recipe: resized (width, height), flip, crop box (8), crop size."""
    return torch.tensor([int(size[0]), int(size[1]), int(bool(flip)), *[int(b) for b in box[:8]], int(crop)],
                        dtype=torch.int64)


def encode_jitter(order: Sequence[int] = (), factors: Sequence[float] = ()) -> torch.Tensor:
    """(8,) float64 jitter row: the order of the applied adjustments (-1 padded), then their factors."""
    half = JITTER_LENGTH // 2
    order, factors = [float(i) for i in order], [float(f) for f in factors]
    return torch.tensor(order + [-1.0] * (half - len(order)) + factors + [0.0] * (half - len(factors)),
                        dtype=torch.float64)


def decode_jitter(row: Optional[torch.Tensor]) -> tuple[tuple[int, ...], tuple[float, ...]]:
    if row is None:
        return (), ()
    values = row.tolist()
    half = JITTER_LENGTH // 2
    order = tuple(int(v) for v in values[:half] if v >= 0)
    return order, tuple(values[half:half + len(order)])


def mirrored_box(box: Sequence[int], width: int, crop: int) -> tuple[int, ...]:
    """The box that crops a horizontally flipped image of `width` to what flipping the crop of `box` gives."""
    top, bottom, left, right, img_top, img_bottom, img_left, img_right = (int(b) for b in box[:8])
    return top, bottom, crop - right, crop - left, img_top, img_bottom, width - img_right, width - img_left


def render_crop(src: torch.Tensor, recipe: Sequence[int], jitter: Optional[torch.Tensor] = None) -> torch.Tensor:
    """src (H, W, 3) uint8 on the device -> the recipe's (crop, crop, 3) uint8 crop, 0 where the box has no
    image (see the module doc)."""
    width, height, flip = int(recipe[0]), int(recipe[1]), bool(recipe[2])
    box, crop = [int(b) for b in recipe[3:11]], int(recipe[11])
    top, bottom, left, right, img_top, img_bottom, img_left, img_right = box
    order, factors = decode_jitter(jitter)
    if order:                                   # contrast needs the whole image's mean: jitter all of it
        image = resize_bicubic(src, (width, height))
        if flip:
            image = image.flip(1)
        window = apply_jitter(image, order, factors)[img_top:img_bottom, img_left:img_right]
    else:
        cols = (width - img_right, width - img_left) if flip else (img_left, img_right)
        window = resize_bicubic(src, (width, height), (img_top, img_bottom), cols)
        if flip:
            window = window.flip(1)
    canvas = src.new_zeros((crop, crop) + tuple(src.shape[2:]))
    canvas[top:bottom, left:right] = window
    return canvas


def render_batch(sources: Sequence[torch.Tensor], recipes: torch.Tensor, jitters: Optional[torch.Tensor],
                 device: torch.device) -> torch.Tensor:
    """Deferred sources (a list of (H_i, W_i, 3) uint8) with their (N, 12) recipes and (N, 8) jitter rows (or
    None) -> (N, crop, crop, 3) uint8 crops on `device`."""
    recipes = recipes.tolist()
    crops = [render_crop(src.to(device, non_blocking=True), recipe, None if jitters is None else jitters[i])
             for i, (src, recipe) in enumerate(zip(sources, recipes))]
    return torch.stack(crops)


# ----------------------------------------------------------------------------- AffinityNet's labels from CRF maps

def block_mean8(maps: torch.Tensor) -> torch.Tensor:
    """(C, H, W) float32 -> (C, H/8, W/8) means over aligned 8 x 8 blocks, summed in numpy's order for
    `maps.reshape(C, h, 8, w, 8).mean(axis=(2, 4))` of a C-contiguous array with h, w >= 2 (its pairwise sum of
    each 8-pixel row, ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)), the 8 rows accumulated in order, then
    / 64), so the same float32 bits on every device. With h or w of 1 numpy coalesces the axes and sums in
    another order: such maps are refused."""
    channels, height, width = maps.shape
    if height % 8 or width % 8 or height < 16 or width < 16:
        raise ValueError(f'block_mean8 needs sides that are multiples of 8, at least 16: got {height} x {width}')
    x = maps.reshape(channels, height // 8, 8, width // 8, 8)
    rows = ((x[..., 0] + x[..., 1]) + (x[..., 2] + x[..., 3])) + ((x[..., 4] + x[..., 5]) + (x[..., 6] + x[..., 7]))
    total = rows[:, :, 0]
    for k in range(1, 8):
        total = total + rows[:, :, k]
    return total / torch.full((1,), 64.0, dtype=maps.dtype, device=maps.device)


def confident_label(la: torch.Tensor, ha: torch.Tensor) -> torch.Tensor:
    """`voc12.aff_dataset.confident_label` in torch: block-averaged marginals (K + 1, h, w) -> (h, w) uint8."""
    no_score = torch.maximum(la.max(dim=0).values, ha.max(dim=0).values) < 1e-5
    la_idx, ha_idx = la.argmax(dim=0), ha.argmax(dim=0)          # the first maximum, as numpy's argmax
    label = la_idx.to(torch.uint8)
    label[la_idx == 0] = 255
    label[ha_idx == 0] = 0
    label[no_score] = 255
    return label


def crf_label_map(la: torch.Tensor, ha: torch.Tensor, recipe: Sequence[int]) -> torch.Tensor:
    """The stored float16 marginals la, ha (K + 1, H, W) of one image and a label recipe (the crop box (8),
    flip, crop) -> the (crop/8, crop/8) uint8 label map of `voc12.aff_dataset.CrfAffinityDataset`: the crop
    (flipped) on a zero canvas, 8 x 8 block means, the confident label."""
    box, flip, crop = [int(b) for b in recipe[:8]], bool(recipe[8]), int(recipe[9])
    top, bottom, left, right = box[:4]
    if flip:
        left, right = crop - right, crop - left
    maps = la.new_zeros((la.shape[0] + ha.shape[0], crop, crop), dtype=torch.float32)
    for offset, stored in ((0, la), (la.shape[0], ha)):
        region = stored[:, box[4]:box[5], box[6]:box[7]].to(torch.float32)
        maps[offset:offset + stored.shape[0], top:bottom, left:right] = region.flip(2) if flip else region
    pooled = block_mean8(maps)
    return confident_label(pooled[:la.shape[0]], pooled[la.shape[0]:])


def crf_label_maps(las: Sequence[torch.Tensor], has: Sequence[torch.Tensor], recipes: torch.Tensor,
                   device: torch.device) -> torch.Tensor:
    """(N, crop/8, crop/8) uint8 label maps on `device` of a collated batch's 'la_src', 'ha_src' lists and
    (N, 10) 'label_recipe'."""
    return torch.stack([crf_label_map(la.to(device, non_blocking=True), ha.to(device, non_blocking=True), recipe)
                        for la, ha, recipe in zip(las, has, recipes.tolist())])
