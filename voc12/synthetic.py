"""A small, context-biased synthetic dataset written in the exact PASCAL VOC2012 devkit layout.

Why it exists: the pipeline (CAM -> IRNet -> CDA) reads VOC from disk, and Context Decoupling
Augmentation is about objects that a classifier learns to recognise by their *background*. This
generator makes that situation controllable: each of the 20 VOC classes is a distinct drawn object
(one of 5 shape families x one of 4 colour/texture families, plus a class hue), each class has a usual
scene (sky, water, grass, ...), and an image uses its primary class's usual scene with probability
`context_bias`. Tests and the benchmark can then train and evaluate the whole pipeline in minutes.

A held-out **context-shift split** (`n_shift` images, none by default) breaks that bias on purpose:
every object of a shift image stands in a scene that is not its class's usual one. It measures what
the literature on spurious correlations measures (localisation where the usual context is absent);
its images are never in the train/val lists, so no step trains on them.

Layout written under `out_dir` (what VOC loaders read):

    JPEGImages/<id>.jpg                   RGB, JPEG quality 95
    SegmentationClass/<id>.png            palette PNG: 0 background, 1..20 CAT_LIST order + 1,
                                          255 on a ~2 px band along every object border (as in VOC)
    SegmentationObject/<id>.png           palette PNG: 0 background, 1..n the visible instances in
                                          <object> order, 255 on the same band (VOC's instance masks)
    Annotations/<id>.xml                  VOC annotation, one <object> per instance visible in the
                                          mask; the first <object> is the image's primary class
    ImageSets/Segmentation/{train,val,trainval}.txt
    ImageSets/Main/{train,val,trainval}.txt and <class>_{train,val,trainval}.txt (id, +1/-1)
    ImageSets/Segmentation/shift.txt      only when n_shift > 0; also ImageSets/Main/shift.txt and
                                          <class>_shift.txt. Not part of trainval (nor of train_aug)
    scenes.json                           {id: scene name} of every image, shift ids included
    usual_scenes.json                     {class name: its usual scene} (USUAL_SCENE): an object is
                                          in a foreign scene when scenes[id] != usual_scenes[class]
    synthetic.json                        the generation parameters, written last (completion mark)

Image `i` is drawn from `np.random.default_rng([seed, i])`, so it does not depend on how many images
come before it, and a dataset is byte-for-byte reproducible from its parameters. Shift image `i` has
the id `2008_{i + 1:06d}` (its own range) and its own stream (`shift_rng`), so adding or resizing the
shift split leaves every train and val file byte-identical.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import cv2
import numpy as np

from misc.imutils import atomic_path, save_label_png, save_rgb
from voc12.classes import CAT_LIST, IGNORE, N_CAT, VOC12

logger = logging.getLogger(__name__)

# Bumped whenever the drawing or the layout changes, so a cached dataset made by older code is
# regenerated (2: the shift split and usual_scenes.json; train/val images are unchanged).
GENERATOR_VERSION = 2

SCENES = ('sky', 'water', 'grass', 'road', 'indoor', 'sand')

# Where each class (index into CAT_LIST) is usually seen, loosely after VOC's photos.
USUAL_SCENE: dict[int, str] = {
    CAT_LIST.index(name): scene for name, scene in (
        ('aeroplane', 'sky'), ('bird', 'sky'),
        ('boat', 'water'),
        ('cow', 'grass'), ('horse', 'grass'), ('sheep', 'grass'), ('dog', 'grass'),
        ('bicycle', 'road'), ('bus', 'road'), ('car', 'road'), ('motorbike', 'road'), ('train', 'road'),
        ('bottle', 'indoor'), ('cat', 'indoor'), ('chair', 'indoor'), ('diningtable', 'indoor'),
        ('pottedplant', 'indoor'), ('sofa', 'indoor'), ('tvmonitor', 'indoor'),
        ('person', 'sand'),
    )
}

SHAPES = ('ellipse', 'box', 'triangle', 'star', 'ring')
TEXTURES = ('solid', 'stripes', 'checker', 'dots')
# 5 shapes x 4 textures = 20 distinct combinations, one per class.
CLASS_SHAPE = tuple(SHAPES[c % len(SHAPES)] for c in range(N_CAT))
CLASS_TEXTURE = tuple(TEXTURES[c // len(SHAPES)] for c in range(N_CAT))
# OpenCV hue (0..180) per class; the multiplier 47 spreads neighbours apart (min gap 8 units) so that
# classes sharing a shape or a texture still differ in colour.
CLASS_HUE = tuple((c * 47) % 180 for c in range(N_CAT))

# Classes that appear together often in VOC; an extra object is drawn from these half the time.
CO_OCCUR: dict[int, tuple[int, ...]] = {
    CAT_LIST.index(a): tuple(CAT_LIST.index(b) for b in partners) for a, partners in (
        ('person', ('horse', 'motorbike', 'bicycle', 'person')),
        ('horse', ('person',)), ('motorbike', ('person',)), ('bicycle', ('person',)),
        ('chair', ('diningtable', 'chair')), ('diningtable', ('chair', 'bottle')),
        ('sofa', ('tvmonitor', 'cat')), ('tvmonitor', ('sofa',)), ('bottle', ('diningtable',)),
        ('sheep', ('sheep',)), ('cow', ('cow',)), ('car', ('car', 'bus')), ('bus', ('car',)),
    )
}


@dataclass(frozen=True)
class ClassSet:
    """How a dataset's classes are drawn: per class index, its shape family, texture family, hue and usual
    scene, and the companions an extra object is drawn from. VOC's is `VOC_CLASSES`; coco14.synthetic
    builds COCO's 80 from the same families (shapes x textures x hues), so both share every drawing
    function below."""
    names: tuple[str, ...]
    shape: tuple[str, ...]
    texture: tuple[str, ...]
    hue: tuple[float, ...]
    usual_scene: tuple[str, ...]
    co_occur: dict[int, tuple[int, ...]]

    @property
    def count(self) -> int:
        return len(self.names)


VOC_CLASSES = ClassSet(CAT_LIST, CLASS_SHAPE, CLASS_TEXTURE, CLASS_HUE,
                       tuple(USUAL_SCENE[c] for c in range(N_CAT)), CO_OCCUR)

N_OBJECTS_P = (0.5, 0.33, 0.17)       # probability of 1, 2, 3 objects per image
PRIMARY_AREA = (0.10, 0.45)           # fraction of the image covered by the primary object
EXTRA_AREA = (0.05, 0.25)             # ... by an extra object (smaller, so the primary stays visible)
MIN_VISIBLE = 0.35                    # an occluded instance keeps at least this share of its pixels
MAX_OUTSIDE = 0.3                     # at most this share of an object's width/height leaves the image

IMAGE_ID_PREFIX = '2007_'
SHIFT_ID_PREFIX = '2008_'             # the shift split's own id range, whatever n_train and n_val are
SHIFT_STREAM = 1                      # spawn key of the shift images' random streams (see shift_rng)
SHIFT_LISTS = ('shift',)              # list files of the shift split (ImageSets/Segmentation and Main)


# ----------------------------------------------------------------------------- colours and noise

def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """One OpenCV-range HSV colour (h 0..180, s/v 0..255) -> float32 RGB (3,)."""
    hsv = np.array([[[h % 180, np.clip(s, 0, 255), np.clip(v, 0, 255)]]], dtype=np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _smooth_noise(size: int, rng: np.random.Generator, sigma: float,
                  ksize: tuple[int, int] | None = None) -> np.ndarray:
    """(size, size) float32 noise, blurred by `sigma` (or a box kernel `ksize`), scaled to unit std."""
    noise = rng.standard_normal((size, size)).astype(np.float32)
    if ksize is not None:
        noise = cv2.blur(noise, ksize)
    elif sigma > 0:
        noise = cv2.GaussianBlur(noise, (0, 0), sigma)
    return noise / max(float(noise.std()), 1e-6)


def _vertical_gradient(size: int, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """(size, size, 3) float32 blend from colour `top` (row 0) to `bottom` (last row)."""
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    return np.broadcast_to(top * (1 - t) + bottom * t, (size, size, 3)).copy()


def _jitter(colour: Sequence[float], rng: np.random.Generator, amount: float) -> np.ndarray:
    return np.asarray(colour, dtype=np.float32) + rng.uniform(-amount, amount, 3).astype(np.float32)


# ----------------------------------------------------------------------------- scenes
# Scenes are muted and noisy, objects are saturated and regular: the two must be told apart by the
# network, yet the scene must still be informative of the class (that is the context bias).

def _scene_sky(size: int, rng: np.random.Generator) -> np.ndarray:
    img = _vertical_gradient(size, _jitter((85, 145, 225), rng, 20), _jitter((190, 215, 240), rng, 15))
    # Soft clouds: low-frequency noise thresholded into white patches.
    clouds = np.clip(_smooth_noise(size, rng, size / 10) - rng.uniform(0.3, 1.0), 0, 1)[..., None]
    return img * (1 - 0.8 * clouds) + 245 * 0.8 * clouds


def _scene_water(size: int, rng: np.random.Generator) -> np.ndarray:
    img = _vertical_gradient(size, _jitter((35, 85, 135), rng, 15), _jitter((20, 55, 100), rng, 15))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = rng.uniform(0.05, 0.09) * size
    # Horizontal wave crests whose rows wobble sideways, plus fine ripple noise.
    wobble = 0.25 * np.sin(xx / (rng.uniform(0.1, 0.2) * size) + rng.uniform(0, 2 * np.pi))
    crest = np.maximum(np.sin(2 * np.pi * (yy / period + wobble)), 0) ** 4
    img += crest[..., None] * np.array([60, 70, 70], np.float32)
    img += 8 * _smooth_noise(size, rng, 1.0)[..., None]
    return img


def _scene_grass(size: int, rng: np.random.Generator) -> np.ndarray:
    base = _jitter((70, 125, 45), rng, 15)
    img = np.broadcast_to(base, (size, size, 3)).copy()
    # Blades: noise stretched vertically; patches: low-frequency brightness changes.
    blades = _smooth_noise(size, rng, 0, ksize=(1, max(3, size // 16)))
    patches = _smooth_noise(size, rng, size / 8)
    img *= (1 + 0.18 * blades + 0.12 * patches)[..., None]
    return img


def _scene_road(size: int, rng: np.random.Generator) -> np.ndarray:
    grey = rng.uniform(80, 115)
    img = np.broadcast_to(_jitter((grey, grey, grey + 4), rng, 5), (size, size, 3)).copy()
    img += 12 * _smooth_noise(size, rng, 0.7)[..., None]
    # A dashed lane marking across the road at a random angle.
    angle = rng.uniform(-0.5, 0.5)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    across = (yy - rng.uniform(0.3, 0.7) * size) * math.cos(angle) - (xx - size / 2) * math.sin(angle)
    along = (xx - size / 2) * math.cos(angle) + (yy - size / 2) * math.sin(angle)
    dash_period = rng.uniform(0.2, 0.3) * size
    lane = (np.abs(across) < max(1.0, 0.015 * size)) & ((along / dash_period) % 1.0 < 0.55)
    img[lane] = (235, 225, 150) if rng.random() < 0.5 else (235, 235, 235)
    return img


def _scene_indoor(size: int, rng: np.random.Generator) -> np.ndarray:
    wall = _jitter(((225, 215, 190), (205, 215, 220), (230, 205, 195))[rng.integers(3)], rng, 12)
    floor = _jitter((120, 80, 50), rng, 15)
    horizon = int(rng.uniform(0.55, 0.75) * size)
    img = np.empty((size, size, 3), np.float32)
    img[:horizon] = wall
    img[horizon:] = floor
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # Faint wallpaper stripes above, wooden planks with grain below.
    stripe_period = rng.uniform(0.06, 0.1) * size
    img[:horizon] *= (1 - 0.06 * ((xx[:horizon] / stripe_period) % 1.0 < 0.5))[..., None]
    grain = _smooth_noise(size, rng, 0, ksize=(max(3, size // 8), 1))
    plank = ((yy - horizon) / max(2.0, 0.07 * size)) % 1.0 < 0.1
    img[horizon:] *= (1 + 0.1 * grain[horizon:] - 0.3 * plank[horizon:])[..., None]
    return img


def _scene_sand(size: int, rng: np.random.Generator) -> np.ndarray:
    img = np.broadcast_to(_jitter((215, 190, 140), rng, 12), (size, size, 3)).copy()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    dunes = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) / (rng.uniform(0.1, 0.2) * size))
    img *= (1 + 0.07 * dunes + 0.08 * _smooth_noise(size, rng, 0.6))[..., None]
    return img


_SCENE_RENDERERS: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    'sky': _scene_sky, 'water': _scene_water, 'grass': _scene_grass,
    'road': _scene_road, 'indoor': _scene_indoor, 'sand': _scene_sand,
}
assert tuple(_SCENE_RENDERERS) == SCENES


def render_scene(scene_name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A background of type `scene_name` (one of SCENES): (size, size, 3) uint8 RGB."""
    if scene_name not in _SCENE_RENDERERS:
        raise ValueError(f'unknown scene {scene_name!r}; expected one of {SCENES}')
    img = _SCENE_RENDERERS[scene_name](size, rng)
    img *= rng.uniform(0.9, 1.1)  # global exposure jitter
    return np.clip(img, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- objects

def _unit_shape(shape: str, rng: np.random.Generator) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Outline of a shape around the origin at radius ~1: (N, 2) outer polygon and an optional hole."""
    if shape in ('ellipse', 'ring'):
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        outer = np.stack([np.cos(t), np.sin(t)], axis=1)
        hole = outer * rng.uniform(0.45, 0.6) if shape == 'ring' else None
        return outer, hole
    if shape == 'box':
        outer = np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], dtype=np.float64)
    elif shape == 'triangle':
        outer = np.array([(0, -1.1), (1.0, 0.75), (-1.0, 0.75)], dtype=np.float64)
    elif shape == 'star':
        t = np.linspace(0, 2 * np.pi, 10, endpoint=False) - np.pi / 2
        radius = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.4, 0.5))
        outer = np.stack([radius * np.cos(t), radius * np.sin(t)], axis=1)
    else:
        raise ValueError(f'unknown shape {shape!r}')
    # Vertex jitter: irregular polygons, so a family is a variety of shapes, not one template.
    return outer + rng.uniform(-0.07, 0.07, outer.shape), None


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


_SHIFT = 4  # fillPoly sub-pixel bits: smooth outlines for small objects


def _fill(mask: np.ndarray, points: np.ndarray, value: int) -> None:
    pts = np.round(points * (1 << _SHIFT)).astype(np.int32)[None]
    cv2.fillPoly(mask, pts, value, lineType=cv2.LINE_8, shift=_SHIFT)


@dataclass
class _Placed:
    cls: int
    mask: np.ndarray       # (H, W) bool, pixels the object covers when drawn (before occlusion)
    truncated: bool        # part of the outline lies outside the image


def _draw_object_mask(cls: int, area_frac: float, size: int, rng: np.random.Generator,
                      classes: ClassSet = VOC_CLASSES) -> _Placed:
    """Place one object of class `cls` covering about `area_frac` of the image; returns its mask."""
    outer, hole = _unit_shape(classes.shape[cls], rng)
    aspect = math.exp(rng.uniform(-0.45, 0.45))   # width / height, 0.64 .. 1.57
    angle = rng.uniform(0, 2 * np.pi)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    transform = np.diag([math.sqrt(aspect), 1 / math.sqrt(aspect)]) @ rot.T  # row vectors: p @ T
    outer = outer @ transform
    hole = hole @ transform if hole is not None else None
    unit_area = _polygon_area(outer) - (_polygon_area(hole) if hole is not None else 0.0)
    scale = math.sqrt(area_frac * size * size / unit_area)
    outer, hole = outer * scale, (hole * scale if hole is not None else None)

    # Centre so that at most MAX_OUTSIDE of the object's extent leaves the image (VOC truncation).
    lo, hi = outer.min(axis=0), outer.max(axis=0)
    extent = hi - lo
    c_min = -lo - MAX_OUTSIDE * extent
    c_max = (size - 1) - hi + MAX_OUTSIDE * extent
    centre = np.where(c_min <= c_max, rng.uniform(0, 1, 2) * (c_max - c_min) + c_min, (c_min + c_max) / 2)
    outer = outer + centre
    mask = np.zeros((size, size), np.uint8)
    _fill(mask, outer, 1)
    if hole is not None:
        _fill(mask, hole + centre, 0)
    truncated = bool((outer.min() < 0) or (outer.max() > size - 1))
    return _Placed(cls, mask.astype(bool), truncated)


def _render_texture(cls: int, size: int, rng: np.random.Generator, classes: ClassSet = VOC_CLASSES) -> np.ndarray:
    """The class's colour/texture family over the whole canvas: (size, size, 3) float32 RGB."""
    hue = classes.hue[cls] + rng.uniform(-4, 4)
    main = _hsv_to_rgb(hue, rng.uniform(175, 255), rng.uniform(170, 250))
    texture = classes.texture[cls]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    u = xx * math.cos(angle) + yy * math.sin(angle)
    v = -xx * math.sin(angle) + yy * math.cos(angle)
    period = max(3.0, rng.uniform(0.05, 0.08) * size)
    phase = rng.uniform(0, 1)
    if texture == 'solid':
        pattern, second = np.zeros((size, size), bool), main
    elif texture == 'stripes':
        pattern = (u / period + phase) % 1.0 < 0.5
        second = _hsv_to_rgb(hue + 90, rng.uniform(160, 230), rng.uniform(150, 230))  # complementary
    elif texture == 'checker':
        pattern = (np.floor(u / period + phase) + np.floor(v / period + phase)) % 2 == 0
        second = _jitter((235, 235, 235), rng, 15)
    elif texture == 'dots':
        du = (u / period + phase) % 1.0 - 0.5
        dv = (v / period + phase) % 1.0 - 0.5
        pattern = du * du + dv * dv < rng.uniform(0.06, 0.1)
        second = _jitter((25, 25, 25), rng, 15)
    else:
        raise ValueError(f'unknown texture {texture!r}')
    img = np.where(pattern[..., None], second, main)
    # Directional shading gives the flat shapes some volume and varies appearance within a class.
    shade_dir = rng.uniform(0, 2 * np.pi)
    ramp = (xx * math.cos(shade_dir) + yy * math.sin(shade_dir)) / size
    return img * (1 + 0.25 * (ramp - ramp.mean()))[..., None]


def _pick_extra_class(primary: int, scene: str, rng: np.random.Generator, classes: ClassSet = VOC_CLASSES) -> int:
    """An extra object's class: a usual companion of the primary, else one at home in the scene."""
    partners = classes.co_occur.get(primary, ())
    if partners and rng.random() < 0.5:
        return int(partners[rng.integers(len(partners))])
    if rng.random() < 0.7:
        natives = [c for c in range(classes.count) if classes.usual_scene[c] == scene]
        return int(natives[rng.integers(len(natives))])
    return int(rng.integers(classes.count))


def _border_band(instances: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels with a differently-labelled 8-neighbour (~2 px band on every border)."""
    kernel = np.ones((3, 3), np.uint8)
    return cv2.dilate(instances, kernel) != cv2.erode(instances, kernel)


@dataclass
class SyntheticImage:
    image: np.ndarray                 # (H, W, 3) uint8 RGB
    label: np.ndarray                 # (H, W) uint8: 0 background, 1..20 classes, 255 ignore
    scene: str
    primary: int                      # class index 0..19 that chose the scene
    # (class index, (xmin, ymin, xmax, ymax) 1-based inclusive like VOC, truncated); primary first
    objects: list[tuple[int, tuple[int, int, int, int], bool]]
    # (H, W) uint8: 0 background, k: the k-th entry of `objects`, 255 ignore (the same band as `label`)
    instance_label: Optional[np.ndarray] = None
    # (H, W) uint8: the same instances without the ignore band (COCO's masks have none)
    instance_map: Optional[np.ndarray] = None


def render_image(index: int, size: int = 128, context_bias: float = 0.85, seed: int = 0,
                 classes: ClassSet = VOC_CLASSES) -> SyntheticImage:
    """Draw image `index` of the dataset made with `seed`: scene, 1-3 objects, label map, boxes."""
    rng = np.random.default_rng([seed, index])
    primary = int(rng.integers(classes.count))
    scene = classes.usual_scene[primary] if rng.random() < context_bias else SCENES[int(rng.integers(len(SCENES)))]
    n_objects = int(rng.choice(len(N_OBJECTS_P), p=N_OBJECTS_P)) + 1
    drawn = [primary] + [_pick_extra_class(primary, scene, rng, classes) for _ in range(n_objects - 1)]
    return _compose(index, scene, drawn, size, rng, classes)


def shift_rng(index: int, seed: int) -> np.random.Generator:
    """The generator of shift image `index`: a child stream (spawn key SHIFT_STREAM) of `[seed, index]`.

    NumPy mixes a spawn key in after the entropy, so this stream differs from every train/val image's
    `default_rng([seed, i])` (a plain `[seed, tag, index]` would not: entropy is zero-padded, and
    `[seed, tag, 0]` draws what `[seed, tag]`, train image `tag`, draws)."""
    return np.random.default_rng(np.random.SeedSequence([seed, index], spawn_key=(SHIFT_STREAM,)))


def foreign_scenes(cls: int, classes: ClassSet = VOC_CLASSES) -> tuple[str, ...]:
    """The scenes in which class `cls` (0..19 on VOC) is out of its usual context."""
    return tuple(s for s in SCENES if s != classes.usual_scene[cls])


def _pick_foreign_class(primary: int, scene: str, rng: np.random.Generator, classes: ClassSet = VOC_CLASSES) -> int:
    """An extra object of a shift image: a usual companion of the primary if it too is foreign to the
    scene, else any class whose usual scene is not `scene`."""
    partners = [c for c in classes.co_occur.get(primary, ()) if classes.usual_scene[c] != scene]
    if partners and rng.random() < 0.5:
        return int(partners[rng.integers(len(partners))])
    strangers = [c for c in range(classes.count) if classes.usual_scene[c] != scene]
    return int(strangers[rng.integers(len(strangers))])


def render_shift_image(index: int, size: int = 128, seed: int = 0, classes: ClassSet = VOC_CLASSES) -> SyntheticImage:
    """Draw image `index` of the context-shift split: every object in a scene that is not its usual one.

    Drawn like `render_image`, but from its own stream (`shift_rng`), with the scene chosen uniformly
    among the primary's foreign scenes and the extra objects among the classes foreign to that scene."""
    rng = shift_rng(index, seed)
    primary = int(rng.integers(classes.count))
    choices = foreign_scenes(primary, classes)
    scene = choices[int(rng.integers(len(choices)))]
    n_objects = int(rng.choice(len(N_OBJECTS_P), p=N_OBJECTS_P)) + 1
    drawn = [primary] + [_pick_foreign_class(primary, scene, rng, classes) for _ in range(n_objects - 1)]
    return _compose(index, scene, drawn, size, rng, classes)


def _compose(index: int, scene: str, drawn: Sequence[int], size: int, rng: np.random.Generator,
             classes: ClassSet = VOC_CLASSES) -> SyntheticImage:
    """Scene plus objects of classes `drawn` (the first is the primary), drawn in that order from `rng`."""
    primary = drawn[0]
    for _ in range(20):  # an image whose objects all vanish is redrawn (rare: needs tiny sizes)
        image = render_scene(scene, size, rng).astype(np.float32)
        instances = np.zeros((size, size), np.uint8)    # 0 background, k + 1 = k-th placed object
        placed: list[_Placed] = []
        for k, cls in enumerate(drawn):
            if k > 0 and not placed:
                break  # the primary could not be drawn: redraw the image rather than lose it
            area_range = PRIMARY_AREA if k == 0 else EXTRA_AREA
            for _attempt in range(8):
                obj = _draw_object_mask(cls, rng.uniform(*area_range), size, rng, classes)
                if not obj.mask.any():
                    continue
                trial = instances.copy()
                trial[obj.mask] = len(placed) + 1
                # Occlusion is allowed, but every earlier object must stay recognisable.
                if all((trial == j + 1).sum() >= MIN_VISIBLE * p.mask.sum() for j, p in enumerate(placed)):
                    instances = trial
                    image[obj.mask] = _render_texture(cls, size, rng, classes)[obj.mask]
                    placed.append(obj)
                    break
        band = _border_band(instances)
        visible = [bool(((instances == j + 1) & ~band).any()) for j in range(len(placed))]
        if placed and visible[0]:
            break
    else:
        raise RuntimeError(f'image {index}: could not place a visible object at size {size}')

    cls_of_instance = np.array([0] + [p.cls + 1 for p in placed], np.uint8)
    label = cls_of_instance[instances]
    label[band] = IGNORE
    objects = []
    instance_label = np.zeros((size, size), np.uint8)     # no random draws: images stay as they were
    instance_label[band] = IGNORE
    instance_map = np.zeros((size, size), np.uint8)
    for j, obj in enumerate(placed):
        if not visible[j]:
            continue  # covered by the ignore band only: not in the mask, so not in the XML either
        instance_label[(instances == j + 1) & ~band] = len(objects) + 1
        instance_map[instances == j + 1] = len(objects) + 1
        ys, xs = np.nonzero(instances == j + 1)
        box = (int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1)
        objects.append((obj.cls, box, obj.truncated))
    # A slight blur softens the aliased polygon edges, as a camera would.
    image = cv2.GaussianBlur(image, (3, 3), 0.6)
    return SyntheticImage(np.clip(image, 0, 255).astype(np.uint8), label, scene, primary, objects, instance_label,
                          instance_map)


# ----------------------------------------------------------------------------- files

def image_ids(n_train: int, n_val: int) -> tuple[list[str], list[str]]:
    """VOC-style ids (`2007_000001`, ...): the first n_train are train, the next n_val val."""
    ids = [f'{IMAGE_ID_PREFIX}{i + 1:06d}' for i in range(n_train + n_val)]
    return ids[:n_train], ids[n_train:]


def shift_image_ids(n_shift: int) -> list[str]:
    """Ids of the shift split (`2008_000001`, ...): shift image i is `render_shift_image(i)`."""
    return [f'{SHIFT_ID_PREFIX}{i + 1:06d}' for i in range(n_shift)]


def annotation_xml(image_id: str, size: int,
                   objects: Sequence[tuple[int, tuple[int, int, int, int], bool]]) -> bytes:
    """The VOC annotation XML of one image."""
    root = ET.Element('annotation')
    ET.SubElement(root, 'folder').text = 'VOC2012'
    ET.SubElement(root, 'filename').text = f'{image_id}.jpg'
    source = ET.SubElement(root, 'source')
    ET.SubElement(source, 'database').text = 'synthetic'
    size_el = ET.SubElement(root, 'size')
    ET.SubElement(size_el, 'width').text = str(size)
    ET.SubElement(size_el, 'height').text = str(size)
    ET.SubElement(size_el, 'depth').text = '3'
    ET.SubElement(root, 'segmented').text = '1'
    for cls, (xmin, ymin, xmax, ymax), truncated in objects:
        obj = ET.SubElement(root, 'object')
        ET.SubElement(obj, 'name').text = CAT_LIST[cls]
        ET.SubElement(obj, 'pose').text = 'Unspecified'
        ET.SubElement(obj, 'truncated').text = str(int(truncated))
        ET.SubElement(obj, 'difficult').text = '0'
        box = ET.SubElement(obj, 'bndbox')
        for tag, value in (('xmin', xmin), ('ymin', ymin), ('xmax', xmax), ('ymax', ymax)):
            ET.SubElement(box, tag).text = str(value)
    ET.indent(root, space='\t')
    return ET.tostring(root, encoding='utf-8') + b'\n'


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _write_text(path: Path, text: str) -> None:
    _write_bytes(path, text.encode('utf-8'))


def _params(n_train: int, n_val: int, size: int, context_bias: float, seed: int, n_shift: int) -> dict:
    return {'n_train': n_train, 'n_val': n_val, 'n_shift': n_shift, 'size': size,
            'context_bias': float(context_bias), 'seed': seed, 'version': GENERATOR_VERSION}


def _renderers(n_train: int, n_val: int, size: int, context_bias: float, seed: int,
               n_shift: int) -> list[tuple[str, Callable[[], SyntheticImage]]]:
    """(id, function drawing that image) of every image: train, val, then shift."""
    train_ids, val_ids = image_ids(n_train, n_val)
    jobs = [(image_id, lambda i=index: render_image(i, size, context_bias, seed))
            for index, image_id in enumerate(train_ids + val_ids)]
    return jobs + [(image_id, lambda i=index: render_shift_image(i, size, seed))
                   for index, image_id in enumerate(shift_image_ids(n_shift))]


def _add_instance_masks(out: Path, n_train: int, n_val: int, size: int, context_bias: float, seed: int,
                        n_shift: int) -> None:
    """Write the SegmentationObject/ masks missing from a dataset whose marker is current (they were
    deleted; the instance map takes no random draws, so images and class masks stay as they are)."""
    for image_id, render in _renderers(n_train, n_val, size, context_bias, seed, n_shift):
        path = out / 'SegmentationObject' / f'{image_id}.png'
        if not path.is_file():
            save_label_png(path, render().instance_label, VOC12.palette)


def _write_sample(out: Path, image_id: str, size: int, sample: SyntheticImage) -> None:
    save_rgb(out / 'JPEGImages' / f'{image_id}.jpg', sample.image)
    save_label_png(out / 'SegmentationClass' / f'{image_id}.png', sample.label, VOC12.palette)
    save_label_png(out / 'SegmentationObject' / f'{image_id}.png', sample.instance_label, VOC12.palette)
    _write_bytes(out / 'Annotations' / f'{image_id}.xml', annotation_xml(image_id, size, sample.objects))


def _write_lists(out: Path, split: str, ids: Sequence[str], present: dict[str, set[int]]) -> None:
    """ImageSets/Segmentation/<split>.txt, ImageSets/Main/<split>.txt and Main/<class>_<split>.txt."""
    listing = ''.join(f'{i}\n' for i in ids)
    _write_text(out / 'ImageSets' / 'Segmentation' / f'{split}.txt', listing)
    _write_text(out / 'ImageSets' / 'Main' / f'{split}.txt', listing)
    for cls, name in enumerate(CAT_LIST):  # VOC's per-class classification lists
        _write_text(out / 'ImageSets' / 'Main' / f'{name}_{split}.txt',
                    ''.join(f'{i} {1 if cls in present[i] else -1:2d}\n' for i in ids))


def _remove_lists(out: Path, split: str) -> None:
    """Drop a split's list files (a regenerated dataset without that split must not seem to have it)."""
    for path in [out / 'ImageSets' / 'Segmentation' / f'{split}.txt', out / 'ImageSets' / 'Main' / f'{split}.txt'] \
            + [out / 'ImageSets' / 'Main' / f'{name}_{split}.txt' for name in CAT_LIST]:
        path.unlink(missing_ok=True)


def generate(out_dir: str | Path, n_train: int = 400, n_val: int = 100, size: int = 128,
             context_bias: float = 0.85, seed: int = 0, n_shift: int = 0) -> Path:
    """Write the synthetic dataset in VOC2012 layout under `out_dir` and return that path.

    `n_shift` images of the context-shift split come on top of train and val (their own ids and random
    streams: train and val are the same whatever `n_shift` is). If `out_dir/synthetic.json` records the
    same parameters, the dataset is complete (the file is written last) and nothing is redrawn. Files
    of an older, larger dataset that the new lists do not name are left in place; loaders only read the
    ids in the lists.
    """
    if n_train < 0 or n_val < 0 or n_train + n_val == 0:
        raise ValueError(f'need n_train, n_val >= 0 and at least one image, got {n_train}, {n_val}')
    if n_shift < 0:
        raise ValueError(f'n_shift {n_shift} must be zero or more')
    if size < 16:
        raise ValueError(f'size {size} is too small to draw recognisable objects (minimum 16)')
    if not 0.0 <= context_bias <= 1.0:
        raise ValueError(f'context_bias {context_bias} is outside [0, 1]')
    if seed < 0:
        raise ValueError(f'seed {seed} must be zero or more')
    out = Path(out_dir)
    params = _params(n_train, n_val, size, context_bias, seed, n_shift)
    marker = out / 'synthetic.json'
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == params:
                _add_instance_masks(out, n_train, n_val, size, context_bias, seed, n_shift)
                logger.info('synthetic VOC at %s is up to date', out)
                return out
        except (json.JSONDecodeError, OSError):
            pass  # unreadable marker: regenerate
        marker.unlink()  # the dataset is about to change; it is incomplete until the new marker exists

    train_ids, val_ids = image_ids(n_train, n_val)
    shift_ids = shift_image_ids(n_shift)
    start = time.perf_counter()
    scenes: dict[str, str] = {}
    present: dict[str, set[int]] = {}
    for image_id, render in _renderers(n_train, n_val, size, context_bias, seed, n_shift):
        sample = render()
        _write_sample(out, image_id, size, sample)
        scenes[image_id] = sample.scene
        present[image_id] = {cls for cls, _, _ in sample.objects}

    # Not in trainval: train_aug (the CAM training list) is Main/trainval minus val on this data.
    for split, ids in (('train', train_ids), ('val', val_ids), ('trainval', train_ids + val_ids)):
        _write_lists(out, split, ids, present)
    for split in SHIFT_LISTS:
        if shift_ids:
            _write_lists(out, split, shift_ids, present)
        else:
            _remove_lists(out, split)
    _write_text(out / 'scenes.json', json.dumps(scenes, indent=1) + '\n')
    usual = {CAT_LIST[cls]: scene for cls, scene in sorted(USUAL_SCENE.items())}
    _write_text(out / 'usual_scenes.json', json.dumps(usual, indent=1) + '\n')
    _write_text(marker, json.dumps(params, indent=1) + '\n')
    elapsed = time.perf_counter() - start
    logger.info('wrote %d synthetic VOC images to %s in %.1f s', len(scenes), out, elapsed)
    return out


def main(argv: Optional[Sequence[str]] = None) -> Path:
    # Imported here so that importing this module stays light and side-effect free.
    from misc.config import non_negative_int, positive_int, unit_float

    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--out', type=Path, required=True, help='dataset root (VOC2012 layout)')
    parser.add_argument('--n_train', '--n-train', type=non_negative_int, default=400)
    parser.add_argument('--n_val', '--n-val', type=non_negative_int, default=100)
    parser.add_argument('--size', type=positive_int, default=128, help='image side in pixels')
    parser.add_argument('--context_bias', '--context-bias', type=unit_float, default=0.85,
                        help="probability that an image shows its primary class's usual scene")
    parser.add_argument('--n_shift', '--n-shift', type=non_negative_int, default=0,
                        help='images of the context-shift split (every object outside its usual scene)')
    parser.add_argument('--seed', type=non_negative_int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s: %(message)s')
    out = generate(args.out, n_train=args.n_train, n_val=args.n_val, size=args.size,
                   context_bias=args.context_bias, seed=args.seed, n_shift=args.n_shift)
    print(out)
    return out


if __name__ == '__main__':
    main()
