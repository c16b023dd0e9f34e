"""PASCAL VOC 2012 (devkit layout) lists, image-level labels and the datasets of each step.

Image-level labels are computed from the dataset itself (Annotations XML, else SegmentationClass
PNG) and cached under the work dir; nothing is shipped from other repositories.

Randomness: every random draw of a training sample comes from `numpy.random.default_rng((seed,
epoch, index))`, so a sample is the same whatever the number of workers or processes, and runs repeat.
"""
from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from misc import imutils
from misc.device_augment import encode_jitter, encode_recipe
from misc.device_input import PairLabels
from misc.indexing import pair_indices
from misc.imutils import BadInputError
from misc.pil_color import jitter_parameters
from voc12.classes import CAT_LIST, CAT_NAME_TO_NUM, N_CAT

logger = logging.getLogger(__name__)

IMG_DIR, ANNOT_DIR, SEG_DIR = 'JPEGImages', 'Annotations', 'SegmentationClass'
SPLIT_NAMES = ('train', 'val', 'trainval', 'train_aug', 'shift', 'test')


# ----------------------------------------------------------------------------- lists and labels

def check_voc_root(root: Path) -> None:
    """One-line errors for a missing or incomplete devkit folder."""
    if root is None or not Path(root).is_dir():
        raise BadInputError(f'--voc12_root {root}: no such folder; give the VOC2012 devkit folder '
                            '(the one holding JPEGImages, Annotations, ImageSets)')
    for sub in (IMG_DIR, 'ImageSets'):
        if not (Path(root) / sub).is_dir():
            raise BadInputError(f'--voc12_root {root}: no {sub}/ inside; give the VOC2012 folder itself '
                                '(e.g. .../VOCdevkit/VOC2012)')


def read_list_file(path: Path) -> list[str]:
    try:
        lines = Path(path).read_text().split()
    except OSError as e:
        raise BadInputError(f'{path}: cannot read list file ({e.strerror})') from None
    # The reference's lists may hold a second column (SBD style 'image label'); keep the first token
    # of every line that looks like an id.
    ids = [token for token in lines if not token.startswith('/')]
    if not ids:
        raise BadInputError(f'{path}: the list is empty; give a list with one image id per line')
    return ids


def resolve_list(spec: Optional[str], default: str, root: Path, sbd_root: Optional[Path] = None) -> list[str]:
    """Image ids from a list file path or a split name (train, val, trainval, train_aug; shift on the
    synthetic dataset)."""
    spec = spec or default
    if Path(spec).is_file():
        ids = read_list_file(Path(spec))
    elif spec in SPLIT_NAMES:
        ids = _split_ids(spec, Path(root), sbd_root)
    else:
        raise BadInputError(f'list {spec!r}: neither a file nor one of {", ".join(SPLIT_NAMES)}')
    missing = [i for i in ids if not (Path(root) / IMG_DIR / f'{i}.jpg').is_file()]
    if missing:
        raise BadInputError(f'list {spec}: {len(missing)} image(s) not in {Path(root) / IMG_DIR}, first '
                            f'{missing[0]}.jpg; fix the list or --voc12_root')
    return ids


def _split_ids(split: str, root: Path, sbd_root: Optional[Path]) -> list[str]:
    seg_sets = root / 'ImageSets' / 'Segmentation'
    if split == 'shift' and not (seg_sets / 'shift.txt').is_file():
        raise BadInputError(f'{seg_sets / "shift.txt"}: missing; only the synthetic dataset has a context-shift '
                            'split (--synthetic_n_shift above 0)')
    if split in ('train', 'val', 'trainval', 'shift', 'test'):
        path = seg_sets / f'{split}.txt'
        if not path.is_file():
            raise BadInputError(f'{path}: missing; the VOC devkit should have it (or pass a list file)')
        return read_list_file(path)
    # train_aug: SBD train + val + VOC train, minus VOC val (the standard 10,582-image set).
    val = set(read_list_file(seg_sets / 'val.txt')) if (seg_sets / 'val.txt').is_file() else set()
    if sbd_root is not None:
        pool = []
        for name in ('train.txt', 'val.txt'):
            path = Path(sbd_root) / name
            if not path.is_file():
                raise BadInputError(f'{path}: missing; --sbd_root should hold SBD\'s train.txt and val.txt')
            pool += read_list_file(path)
        pool += read_list_file(seg_sets / 'train.txt')
    else:
        main = root / 'ImageSets' / 'Main' / 'trainval.txt'
        if not main.is_file():
            raise BadInputError(f'{main}: missing; train_aug needs --sbd_root or ImageSets/Main/trainval.txt')
        _warn_once('train_aug without --sbd_root: using ImageSets/Main/trainval minus Segmentation val '
                       '(not the paper\'s 10,582-image set)')
        pool = read_list_file(main)
    seen, ids = set(), []
    for image_id in pool:
        if image_id not in val and image_id not in seen and (root / IMG_DIR / f'{image_id}.jpg').is_file():
            seen.add(image_id)
            ids.append(image_id)
    return sorted(ids)


def shift_ids(root: Path) -> list[str]:
    """Ids of the context-shift split (ImageSets/Segmentation/shift.txt of the synthetic dataset), or []
    where the dataset has none (VOC)."""
    path = Path(root) / 'ImageSets' / 'Segmentation' / 'shift.txt'
    return read_list_file(path) if path.is_file() else []


def load_scenes(root: Path, class_names: Sequence[str] = CAT_LIST) -> Optional[tuple[dict[str, str], list[str]]]:
    """({image id: scene}, usual scene of each class 0..K-1 of `class_names`) from the synthetic dataset's
    scenes.json and usual_scenes.json; None where the dataset has no scene labels (VOC, COCO)."""
    scenes_path, usual_path = Path(root) / 'scenes.json', Path(root) / 'usual_scenes.json'
    if not (scenes_path.is_file() and usual_path.is_file()):
        return None
    try:
        scenes, usual = json.loads(scenes_path.read_text()), json.loads(usual_path.read_text())
    except (OSError, ValueError) as e:
        raise BadInputError(f'{scenes_path.parent}: unreadable scenes.json / usual_scenes.json ({e}); '
                            'delete synthetic.json to regenerate the dataset') from None
    missing = [name for name in class_names if name not in usual]
    if missing:
        raise BadInputError(f'{usual_path}: no usual scene for {missing[0]}; delete synthetic.json to regenerate '
                            'the dataset')
    return scenes, [usual[name] for name in class_names]


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning(message)


def check_images(root: Path, ids: Sequence[str]) -> None:
    """Cheap up-front checks of every listed image, so a broken file fails at once with its name rather
    than deep into training: the header must decode to a usable mode and a JPEG must not be truncated."""
    from PIL import Image
    usable = {'RGB', 'L', 'P', 'RGBA', 'CMYK', 'LA', 'I;16', 'I;16B', 'I;16L', 'I', 'YCbCr', '1'}
    for image_id in ids:
        path = Path(root) / IMG_DIR / f'{image_id}.jpg'
        try:
            with Image.open(path) as image:
                mode, fmt, size = image.mode, image.format, image.size
        except (OSError, SyntaxError) as e:
            raise BadInputError(f'{path}: not a readable image ({e}); replace it or drop {image_id} from the list') \
                from None
        if mode not in usable:
            raise BadInputError(f'{path}: image mode {mode} cannot be converted to RGB; convert the file to RGB')
        if min(size) < 1:
            raise BadInputError(f'{path}: empty image ({size[0]}x{size[1]})')
        if fmt == 'JPEG':
            with open(path, 'rb') as f:
                f.seek(-2, 2)
                if f.read(2) != b'\xff\xd9':
                    raise BadInputError(f'{path}: truncated JPEG (no end-of-image marker); re-download or '
                                        f'replace it, or drop {image_id} from the list')


def image_label_from_xml(path: Path) -> np.ndarray:
    """(20,) float32 multi-hot vector of the object names in a VOC annotation file."""
    label = np.zeros(N_CAT, np.float32)
    try:
        tree = ET.parse(path)
    except ET.ParseError as e:
        raise BadInputError(f'{path}: malformed annotation XML ({e})') from None
    for name in tree.getroot().iter('name'):
        index = CAT_NAME_TO_NUM.get((name.text or '').strip())
        if index is not None:
            label[index] = 1.0
    return label


def image_label_from_mask(path: Path, num_classes: int = N_CAT) -> np.ndarray:
    values = np.unique(imutils.read_label_png(path))
    label = np.zeros(num_classes, np.float32)
    for v in values:
        if 1 <= v <= num_classes:
            label[v - 1] = 1.0
    return label


def load_image_labels(root: Path, ids: Sequence[str], cache_dir: Optional[Path] = None,
                      num_classes: int = N_CAT) -> dict[str, np.ndarray]:
    """Image-level labels of `ids`, from Annotations XML (else the segmentation PNG), cached as npz (on COCO
    the cache holds every image's label, made from the instances by coco14.dataset)."""
    root = Path(root)
    cache = Path(cache_dir) / 'cls_labels.npz' if cache_dir is not None else None
    labels: dict[str, np.ndarray] = {}
    if cache is not None and cache.is_file():
        with np.load(cache) as stored:
            labels = dict(zip(stored['ids'].tolist(), stored['labels']))
    todo = [i for i in ids if i not in labels]
    for image_id in todo:
        xml, png = root / ANNOT_DIR / f'{image_id}.xml', root / SEG_DIR / f'{image_id}.png'
        if xml.is_file():
            labels[image_id] = image_label_from_xml(xml)
        elif png.is_file():
            labels[image_id] = image_label_from_mask(png, num_classes)
        else:
            raise BadInputError(f'{image_id}: neither {xml} nor {png} exists, so its image-level label is '
                                'unknown; add the annotation or drop the image from the list')
    if todo and cache is not None:
        keys = sorted(labels)
        imutils.save_npz(cache, ids=np.asarray(keys), labels=np.stack([labels[k] for k in keys]))
    return {i: labels[i] for i in ids}


def require_labelled(ids: Sequence[str], labels: dict[str, np.ndarray], list_name: str) -> None:
    unlabelled = [i for i in ids if labels[i].sum() == 0]
    if unlabelled:
        raise BadInputError(f'{list_name}: {len(unlabelled)} image(s) have no class label (first '
                            f'{unlabelled[0]}); a classification list needs at least one class per image')


def load_gt_mask(root: Path, image_id: str, size: Optional[Sequence[int]] = None) -> np.ndarray:
    path = Path(root) / SEG_DIR / f'{image_id}.png'
    mask = imutils.read_label_png(path)
    if size is not None and tuple(mask.shape) != tuple(size):
        raise BadInputError(f'{path}: mask is {mask.shape[1]}x{mask.shape[0]} but the image is '
                            f'{size[1]}x{size[0]}; masks must match their images')
    return mask


# ----------------------------------------------------------------------------- affinity labels

class GetAffinityLabelFromIndices:
    """(h, w) label map -> (bg_pos, fg_pos, neg) float32 tensors of shape (P, sources); labels from
    `num_labels` on (255, the unsure pixels) are in no pair (21 on VOC, 81 on COCO)."""

    def __init__(self, indices_from: np.ndarray, indices_to: np.ndarray, num_labels: int = N_CAT + 1):
        self.indices_from = np.asarray(indices_from)
        self.indices_to = np.asarray(indices_to)
        self.num_labels = num_labels

    def __call__(self, segm_map: np.ndarray | torch.Tensor):
        flat = np.asarray(segm_map).reshape(-1)
        label_from = flat[self.indices_from][None, :]
        label_to = flat[self.indices_to]
        valid = (label_from < self.num_labels) & (label_to < self.num_labels)
        equal = label_from == label_to
        positive = equal & valid
        bg_pos = (positive & (label_from == 0)).astype(np.float32)
        fg_pos = (positive & (label_from > 0)).astype(np.float32)
        neg = (~equal & valid).astype(np.float32)
        return torch.from_numpy(bg_pos), torch.from_numpy(fg_pos), torch.from_numpy(neg)


def affinity_labels_in_radius(label: np.ndarray, radius: int = 5):
    """AffinityNet's pair labels of an (h, w) label map (0 background, 1..20, 255 ignore): the reference's
    `ExtractAffinityLabelInRadius` on the pairs of `misc.indexing.pair_indices` (sources keep radius - 1
    from the bottom, left and right edges). Returns (bg_pos, fg_pos, neg), each (P, S) float32 tensors:
    same background, same foreground class, different labels; pairs touching 255 are in none."""
    src, dst = pair_indices(radius, np.asarray(label).shape[:2])
    return GetAffinityLabelFromIndices(src, dst)(label)


# ----------------------------------------------------------------------------- datasets

class _EpochSeeded(Dataset):
    """Gives each sample its own generator from (seed, epoch, index).

    The epoch lives in a one-element tensor in shared memory, so `set_epoch` in the main process reaches
    DataLoader workers that persist across epochs (a plain attribute would stay at the value the workers
    were started with). `compact` switches the samples to their uint8 form (misc/device_input.py), which
    the training step expands on its device; False (the default) gives today's float32 samples. `deferred`
    (with `compact`, on a GPU run) leaves the resize and colour jitter to the device too (misc/device_augment.py):
    a sample then carries the decoded image and its draws."""

    compact = False
    deferred = False

    def __init__(self, seed: int):
        self.seed = seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, self.epoch, index))


def color_jitter(img: np.ndarray, rng: np.random.Generator, strength: Sequence[float]) -> np.ndarray:
    """torchvision's ColorJitter(brightness, contrast, saturation, hue) on an (H, W, 3) uint8 image, with the
    order of the four adjustments and their factors drawn from `rng` (not torch's global generator), so a
    sample stays a function of (seed, epoch, index): factors uniform in [1 - s, 1 + s] (hue: shift in
    [-h, h]), applied by torchvision.transforms.functional on the PIL image in a random order."""
    from PIL import Image
    return np.asarray(color_jitter_image(Image.fromarray(np.ascontiguousarray(img)), rng, strength), dtype=np.uint8)


def color_jitter_image(image, rng: np.random.Generator, strength: Sequence[float]):
    """`color_jitter` on an RGB PIL image (the same draws, `misc.pil_color.jitter_parameters`), returning a PIL
    image."""
    import torchvision.transforms.functional as TF
    adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i, factor in zip(*jitter_parameters(rng, strength)):
        image = adjust[i](image, factor)
    return image


@dataclass(frozen=True)
class CamCropDraws:
    """The random draws of one CAM training crop, in the reference's order: the long side (-> `size`, the
    resized (width, height)), the flip, the colour jitter's (order, factors), the crop box of the resized image."""
    size: tuple[int, int]
    flip: bool
    jitter: tuple[tuple[int, ...], tuple[float, ...]]
    box: tuple[int, ...]


def draw_cam_crop(width: int, height: int, rng: np.random.Generator, resize_long: Sequence[int], crop_size: int,
                  jitter: Optional[Sequence[float]] = None) -> CamCropDraws:
    """`augment_for_cam`'s draws for a (height, width) image."""
    target_long = int(rng.integers(resize_long[0], resize_long[1] + 1))
    scale = target_long / max(height, width)
    size = (int(np.round(width * scale)), int(np.round(height * scale)))     # as imutils.pil_rescale
    flip = bool(rng.random() > 0.5)                                           # imutils.random_lr_flip
    params = jitter_parameters(rng, jitter) if jitter is not None and any(jitter) else ((), ())
    return CamCropDraws(size, flip, params, imutils.random_crop_box(size[::-1], crop_size, rng))


def augment_for_cam(img: np.ndarray, rng: np.random.Generator, resize_long: Sequence[int], crop_size: int,
                    mask: Optional[np.ndarray] = None, jitter: Optional[Sequence[float]] = None) \
        -> tuple[np.ndarray, Optional[float]]:
    """The reference's CAM training augmentation: random long-side resize (bicubic), horizontal flip,
    colour jitter (PSA/SEAM only: `jitter` = (brightness, contrast, saturation, hue)), ImageNet
    normalisation, random crop padded with 0 (the mean colour) -> (3, crop, crop) float32.

    An optional (H, W) mask (CDA's pasted pixels) follows the same geometry (nearest neighbour); the
    second value returned is then the share of its resized pixels that survive the crop, else None.
    """
    target_long = int(rng.integers(resize_long[0], resize_long[1] + 1))
    scale = target_long / max(img.shape[:2])
    img = imutils.pil_rescale(img, scale, 3)
    images = [img] if mask is None else [img, imutils.pil_rescale(mask.astype(np.uint8), scale, 0)]
    images = imutils.random_lr_flip(images, rng)
    if jitter is not None and any(jitter):
        images[0] = color_jitter(images[0], rng, jitter)
    images[0] = imutils.normalize(images[0])
    resized_count = int(images[1].sum()) if mask is not None else 0
    images = imutils.random_crop(images, crop_size, (0.0, 0), rng)
    visible = None if mask is None else float(images[1].sum()) / max(resized_count, 1)
    return imutils.hwc_to_chw(images[0]), visible


def augment_for_cam_uint8(img, rng: np.random.Generator, resize_long: Sequence[int], crop_size: int,
                          mask: Optional[np.ndarray] = None, jitter: Optional[Sequence[float]] = None) \
        -> tuple[np.ndarray, np.ndarray, Optional[float]]:
    """`augment_for_cam` with the same draws, stopping before the normalisation, on an (H, W, 3) uint8 array
    or an RGB PIL image (resize, flip, jitter and crop all in PIL, one array at the end): (crop (crop,
    crop, 3) uint8 padded with 0, valid (4,) int64 (top, bottom, left, right) rectangle of image pixels in
    it, visible share of the mask or None). `misc.device_input.expand_image` of the first two equals
    `augment_for_cam`'s image bit for bit."""
    import torchvision.transforms.functional as TF
    from PIL import Image
    image = img if isinstance(img, Image.Image) else Image.fromarray(np.ascontiguousarray(img))
    draws = draw_cam_crop(*image.size, rng, resize_long, crop_size, jitter)
    images = [image] if mask is None else [image, Image.fromarray(mask.astype(np.uint8))]
    if draws.size != image.size:
        images = [im.resize(draws.size, resample=Image.BICUBIC if i == 0 else Image.NEAREST)
                  for i, im in enumerate(images)]
    if draws.flip:
        images = [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in images]
    adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i, factor in zip(*draws.jitter):
        images[0] = adjust[i](images[0], factor)
    resized_count = int(np.asarray(images[1]).sum()) if mask is not None else 0
    crops = [np.array(imutils.pil_crop(im, draws.box, crop_size)) for im in images]
    visible = None if mask is None else float(crops[1].sum()) / max(resized_count, 1)
    return crops[0], np.asarray(draws.box[:4], dtype=np.int64), visible


def deferred_cam_sample(image: np.ndarray, rng: np.random.Generator, resize_long: Sequence[int], crop_size: int,
                        mask: Optional[np.ndarray] = None, jitter: Optional[Sequence[float]] = None,
                        prefix: str = 'img') -> tuple[dict, Optional[float]]:
    """`augment_for_cam_uint8`'s draws on an (H, W, 3) uint8 array, with the rendering left to the device:
    ({prefix_src (H, W, 3) uint8, prefix_recipe (12,), prefix_jitter (8,), prefix_valid (4,)}, visible share of
    the mask or None). `misc.device_augment.render_batch` of the three gives `augment_for_cam_uint8`'s crop bit
    for bit."""
    src = np.ascontiguousarray(image)
    height, width = src.shape[:2]
    draws = draw_cam_crop(width, height, rng, resize_long, crop_size, jitter)
    box = draws.box
    visible = None
    if mask is not None:        # PIL's nearest resize of the mask as one gather (misc.imutils.pil_nearest_indices)
        resized = mask.astype(bool, copy=False)[np.ix_(imutils.pil_nearest_indices(height, draws.size[1]),
                                                       imutils.pil_nearest_indices(width, draws.size[0]))]
        if draws.flip:
            resized = resized[:, ::-1]
        inside = int(np.count_nonzero(resized[box[4]:box[5], box[6]:box[7]]))
        visible = float(inside) / max(int(np.count_nonzero(resized)), 1)
    return {f'{prefix}_src': torch.from_numpy(src),
            f'{prefix}_recipe': encode_recipe(draws.size, draws.flip, box, crop_size),
            f'{prefix}_jitter': encode_jitter(*draws.jitter),
            f'{prefix}_valid': torch.tensor(box[:4], dtype=torch.int64)}, visible


class ClassificationDataset(_EpochSeeded):
    """CAM training images: {'name', 'img' (3, crop, crop), 'label' (20,)}; compact: 'img' (crop, crop, 3)
    uint8 and 'img_valid' (4,)."""

    def __init__(self, ids: Sequence[str], root: Path, labels: dict[str, np.ndarray],
                 resize_long: Sequence[int] = (320, 640), crop_size: int = 512, seed: int = 0,
                 jitter: Optional[Sequence[float]] = None):
        super().__init__(seed)
        self.ids, self.root, self.labels = list(ids), Path(root), labels
        self.resize_long, self.crop_size, self.jitter = resize_long, crop_size, jitter

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> np.ndarray:
        return imutils.read_rgb(self.root / IMG_DIR / f'{self.ids[index]}.jpg')

    def load_image(self, index: int):
        """The image as an RGB PIL image (compact samples resize it in PIL)."""
        return imutils.read_rgb_image(self.root / IMG_DIR / f'{self.ids[index]}.jpg')

    def load_for_device(self, index: int) -> np.ndarray:
        """The image as `load` gives it, decoded the faster way (deferred samples: imutils.read_rgb_fast)."""
        return imutils.read_rgb_fast(self.root / IMG_DIR / f'{self.ids[index]}.jpg')

    def __getitem__(self, index: int) -> dict:
        rng = self.rng(index)
        out = {'name': self.ids[index], 'label': torch.from_numpy(self.labels[self.ids[index]])}
        if self.compact and self.deferred:
            out.update(deferred_cam_sample(self.load_for_device(index), rng, self.resize_long, self.crop_size,
                                           jitter=self.jitter)[0])
        elif self.compact:
            img, valid, _ = augment_for_cam_uint8(self.load_image(index), rng, self.resize_long, self.crop_size,
                                                  jitter=self.jitter)
            out.update(img=torch.from_numpy(img), img_valid=torch.from_numpy(valid))
        else:
            img, _ = augment_for_cam(self.load(index), rng, self.resize_long, self.crop_size, jitter=self.jitter)
            out['img'] = torch.from_numpy(img)
        return out


class MultiScaleDataset(Dataset):
    """Inference images at several scales, each stacked with its horizontal flip.

    {'name', 'img': list over scales of (2, 3, h_s, w_s) float32, 'size': (H, W), 'label': (20,)}.
    """

    def __init__(self, ids: Sequence[str], root: Path, labels: Optional[dict[str, np.ndarray]] = None,
                 scales: Sequence[float] = (1.0,)):
        self.ids, self.root, self.labels, self.scales = list(ids), Path(root), labels, tuple(scales)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        image_id = self.ids[index]
        img = imutils.read_rgb(self.root / IMG_DIR / f'{image_id}.jpg')
        pyramid = []
        for scale in self.scales:
            scaled = img if scale == 1 else imutils.pil_rescale(img, scale, 3)
            chw = imutils.hwc_to_chw(imutils.normalize(scaled))
            pyramid.append(torch.from_numpy(np.stack([chw, chw[..., ::-1]])))
        out = {'name': image_id, 'img': pyramid, 'size': tuple(img.shape[:2])}
        if self.labels is not None:
            out['label'] = torch.from_numpy(self.labels[image_id])
        return out


class TopLeftCropDataset(Dataset):
    """Images top-left cropped (padded with 0) to `crop_size`: the IRN mean-shift pass."""

    def __init__(self, ids: Sequence[str], root: Path, crop_size: int):
        self.ids, self.root, self.crop_size = list(ids), Path(root), crop_size

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        img = imutils.normalize(imutils.read_rgb(self.root / IMG_DIR / f'{self.ids[index]}.jpg'))
        img = imutils.top_left_crop(img, self.crop_size, 0.0)
        return {'name': self.ids[index], 'img': torch.from_numpy(imutils.hwc_to_chw(img))}


class AffinityDataset(_EpochSeeded):
    """IRN training: image, IR label, and the pair labels of the x0.25 label map.

    {'name', 'img' (3, crop, crop), 'aff_bg_pos_label', 'aff_fg_pos_label', 'aff_neg_label' (P, sources)};
    compact: {'name', 'img' (crop, crop, 3) uint8, 'img_valid' (4,), 'pair_label_map' (crop/4, crop/4)
    uint8}, whose pair labels `self.pair_labels` gives on the device.
    """

    def __init__(self, ids: Sequence[str], root: Path, label_dir: Path, crop_size: int,
                 indices_from: np.ndarray, indices_to: np.ndarray,
                 rescale: Sequence[float] = (0.5, 1.5), seed: int = 0, num_labels: int = N_CAT + 1):
        super().__init__(seed)
        self.ids, self.root, self.label_dir = list(ids), Path(root), Path(label_dir)
        self.crop_size, self.rescale = crop_size, rescale
        self.extract_affinity_labels = GetAffinityLabelFromIndices(indices_from, indices_to, num_labels)
        self.pair_labels = PairLabels(indices_from, indices_to, num_labels)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict:
        rng = self.rng(index)
        image_id = self.ids[index]
        if self.compact:
            return self._compact_sample(image_id, rng)
        img = imutils.read_rgb(self.root / IMG_DIR / f'{image_id}.jpg')
        label = imutils.read_label_png(self.label_dir / f'{image_id}.png')
        img, label = imutils.random_scale([img, label], self.rescale, (3, 0), rng)
        img = imutils.normalize(img)
        img, label = imutils.random_lr_flip([img, label], rng)
        img, label = imutils.random_crop([img, label], self.crop_size, (0.0, 255), rng)
        reduced = imutils.pil_rescale(label, 0.25, 0)
        bg_pos, fg_pos, neg = self.extract_affinity_labels(reduced)
        return {'name': image_id, 'img': torch.from_numpy(imutils.hwc_to_chw(img)),
                'aff_bg_pos_label': bg_pos, 'aff_fg_pos_label': fg_pos, 'aff_neg_label': neg}

    def _compact_sample(self, image_id: str, rng: np.random.Generator) -> dict:
        """The old path's draws (scale, flip, crop box) with the image kept in PIL until its uint8 crop."""
        from PIL import Image
        image = imutils.read_rgb_image(self.root / IMG_DIR / f'{image_id}.jpg')
        label = Image.fromarray(imutils.read_label_png(self.label_dir / f'{image_id}.png'))
        scale = self.rescale[0] + rng.random() * (self.rescale[1] - self.rescale[0])      # imutils.random_scale
        resized = []
        for im, resample in ((image, Image.BICUBIC), (label, Image.NEAREST)):           # as imutils.pil_rescale
            size = (int(np.round(im.size[0] * scale)), int(np.round(im.size[1] * scale)))
            resized.append(im if size == im.size else im.resize(size, resample=resample))
        if rng.random() > 0.5:                                                          # imutils.random_lr_flip
            resized = [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in resized]
        image, label = resized
        box = imutils.random_crop_box(image.size[::-1], self.crop_size, rng)
        img = np.array(imutils.pil_crop(image, box, self.crop_size))
        label = imutils.apply_crop(np.asarray(label), box, self.crop_size, 255)
        return {'name': image_id, 'img': torch.from_numpy(img), 'img_valid': torch.tensor(box[:4]),
                'pair_label_map': torch.from_numpy(np.array(imutils.pil_rescale(label, 0.25, 0)))}
