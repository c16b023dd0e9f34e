"""Core functions: metrics, image reading and crops, IR labels, CAM fusion, random-walk masks, VOC loading."""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from misc import imutils
from misc.imutils import BadInputError
from misc.indexing import PathIndex
from misc.metrics import ConfusionMatrix, label_from_scores
from step.cam_to_ir_label import cam_to_ir_label
from step.make_cam import compute_cams, fuse_scales
from step.make_sem_seg_labels import sem_seg_from_edge
from voc12 import dataloader
from voc12.classes import CAT_NAME_TO_NUM, N_CAT


def split_ids(root: Path, split: str) -> list[str]:
    return (root / 'ImageSets' / 'Segmentation' / f'{split}.txt').read_text().split()


# ----------------------------------------------------------------------------- metrics

def test_confusion_matrix_hand_example() -> None:
    cm = ConfusionMatrix(num_classes=4)
    # the last pixel is ignored: its prediction (2) must not count as a false positive of class 2
    cm.update(np.array([[0, 0, 1], [1, 3, 255]]), np.array([[0, 1, 1], [1, 1, 2]]))
    assert cm.mat.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]]
    result = cm.compute()
    iou = result['iou']
    assert iou[0] == pytest.approx(1 / 2)         # hit 1, gt 2, pred 1
    assert iou[1] == pytest.approx(2 / 4)         # hit 2, gt 2, pred 4
    assert math.isnan(iou[2])                     # absent from both: NaN, left out of the mean
    assert iou[3] == 0.0                          # present in the ground truth, never hit
    assert result['miou'] == pytest.approx((0.5 + 0.5 + 0.0) / 3)

    cm.update(np.array([2, 2]), np.array([2, 2]))  # updates accumulate
    assert cm.compute()['iou'][2] == 1.0
    assert cm.compute()['miou'] == pytest.approx((0.5 + 0.5 + 1.0 + 0.0) / 4)


def test_confusion_matrix_edge_cases() -> None:
    cm = ConfusionMatrix(num_classes=3)
    cm.update(np.full((2, 2), 255), np.zeros((2, 2)))
    assert cm.mat.sum() == 0 and math.isnan(cm.compute()['miou'])
    cm.update(np.array([0]), np.array([1]))       # a false positive only: IoU 0, not NaN
    assert cm.compute()['iou'][1] == 0.0
    with pytest.raises(ValueError):
        cm.update(np.array([0]), np.array([3]))
    with pytest.raises(ValueError):
        cm.update(np.array([5]), np.array([0]))
    from voc12.classes import VOC12
    assert len(ConfusionMatrix(VOC12.num_labels, VOC12.ignore).compute()['iou']) == 21


def test_label_from_scores() -> None:
    scores = np.array([[[0.9, 0.1, 0.3], [0.5, 0.2, 0.0]],
                       [[0.2, 0.8, 0.3], [0.4, 0.6, 0.0]]], np.float32)     # (K=2, 2, 3)
    label = label_from_scores(scores, np.array([4, 14]), bg_thres=0.5)
    assert label.dtype == np.uint8 and label.shape == (2, 3)
    # keys are 0-based class indices: class 4 -> label 5, class 14 -> label 15; ties go to background
    assert label.tolist() == [[5, 15, 0], [0, 15, 0]]
    assert label_from_scores(scores, np.array([4, 14]), bg_thres=0.0).tolist() == [[5, 15, 5], [5, 15, 0]]
    assert (label_from_scores(scores, np.array([4, 14]), bg_thres=1.0) == 0).all()


# ----------------------------------------------------------------------------- image reading

@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)


def test_read_rgb_plain_and_grayscale(tmp_path: Path, rgb: np.ndarray) -> None:
    Image.fromarray(rgb).save(tmp_path / 'rgb.png')
    out = imutils.read_rgb(tmp_path / 'rgb.png')
    assert out.dtype == np.uint8 and np.array_equal(out, rgb)

    gray = rgb[..., 0]
    Image.fromarray(gray, mode='L').save(tmp_path / 'gray.png')
    out = imutils.read_rgb(tmp_path / 'gray.png')
    assert out.shape == (12, 16, 3) and out.dtype == np.uint8
    assert all(np.array_equal(out[..., c], gray) for c in range(3))


def test_read_rgb_drops_alpha(tmp_path: Path, rgb: np.ndarray) -> None:
    rgba = np.concatenate([rgb, np.full((12, 16, 1), 10, np.uint8)], axis=2)
    Image.fromarray(rgba, mode='RGBA').save(tmp_path / 'rgba.png')
    out = imutils.read_rgb(tmp_path / 'rgba.png')
    assert out.shape == (12, 16, 3) and np.array_equal(out, rgb)


def test_read_rgb_cmyk_jpeg(tmp_path: Path) -> None:
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[:, :8] = (0, 255, 255, 0)          # red
    cmyk[:, 8:] = (255, 0, 255, 0)          # green
    Image.fromarray(cmyk, mode='CMYK').save(tmp_path / 'cmyk.jpg', format='JPEG', quality=100)
    with Image.open(tmp_path / 'cmyk.jpg') as image:
        assert image.mode == 'CMYK'
    out = imutils.read_rgb(tmp_path / 'cmyk.jpg')
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert np.abs(out[4, 2].astype(int) - (255, 0, 0)).max() < 20
    assert np.abs(out[4, 13].astype(int) - (0, 255, 0)).max() < 20


def test_read_rgb_16_bit_png(tmp_path: Path) -> None:
    deep = np.linspace(0, 65535, 12 * 16).reshape(12, 16).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / 'deep.png')
    with Image.open(tmp_path / 'deep.png') as image:
        assert image.mode.startswith('I')     # really 16-bit on disk
    out = imutils.read_rgb(tmp_path / 'deep.png')
    assert out.shape == (12, 16, 3) and out.dtype == np.uint8
    # scaled to 0..255 (not clipped: a plain uint8 cast would wrap or saturate)
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    assert np.abs(out[..., 0].astype(int) - np.round(deep / 65535 * 255)).max() <= 1
    assert np.all(np.diff(out[..., 0].reshape(-1).astype(int)) >= 0)


def test_read_rgb_palette(tmp_path: Path) -> None:
    index = np.zeros((6, 8), np.uint8)
    index[:, 4:] = 1
    image = Image.fromarray(index, mode='P')
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    image.save(tmp_path / 'palette.png')
    out = imutils.read_rgb(tmp_path / 'palette.png')
    assert out.shape == (6, 8, 3)
    assert out[0, 0].tolist() == [10, 20, 30] and out[0, 7].tolist() == [200, 100, 50]


def test_read_rgb_bad_files_name_the_file(tmp_path: Path, rgb: np.ndarray) -> None:
    Image.fromarray(np.tile(rgb, (8, 8, 1))).save(tmp_path / 'whole.jpg', quality=95)
    data = (tmp_path / 'whole.jpg').read_bytes()
    (tmp_path / 'truncated.jpg').write_bytes(data[:len(data) // 2])
    (tmp_path / 'notes.jpg').write_text('not an image at all\n')
    for name in ('truncated.jpg', 'notes.jpg', 'missing.jpg'):
        with pytest.raises(BadInputError, match=name):
            imutils.read_rgb(tmp_path / name)


def test_read_label_png(tmp_path: Path) -> None:
    label = np.array([[0, 1, 255], [20, 5, 0]], np.uint8)
    from voc12.classes import VOC12
    imutils.save_label_png(tmp_path / 'label.png', label, VOC12.palette)
    with Image.open(tmp_path / 'label.png') as image:
        assert image.mode == 'P'
    assert np.array_equal(imutils.read_label_png(tmp_path / 'label.png'), label)
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / 'rgb.png')
    with pytest.raises(BadInputError, match='rgb.png'):
        imutils.read_label_png(tmp_path / 'rgb.png')


# ----------------------------------------------------------------------------- atomic writes and crops

def test_atomic_path_writes_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / 'sub' / 'out.txt'
    with pytest.raises(RuntimeError):
        with imutils.atomic_path(target) as tmp:
            tmp.write_text('half')
            raise RuntimeError('killed mid-write')
    assert not target.exists()
    assert list(target.parent.iterdir()) == []           # no temporary file left behind

    with imutils.atomic_path(target) as tmp:
        assert tmp != target and tmp.parent == target.parent
        tmp.write_text('old')
    assert target.read_text() == 'old' and list(target.parent.iterdir()) == [target]

    with pytest.raises(RuntimeError):                    # a failed rewrite keeps the previous file
        with imutils.atomic_path(target) as tmp:
            tmp.write_text('new')
            raise RuntimeError
    assert target.read_text() == 'old' and list(target.parent.iterdir()) == [target]


def test_random_crop_pads_small_images() -> None:
    img = np.arange(10 * 20 * 3, dtype=np.float32).reshape(10, 20, 3) + 1     # all > 0
    label = np.full((10, 20), 7, np.uint8)
    out_img, out_label = imutils.random_crop([img, label], 32, (0.0, 255), np.random.default_rng(3))
    assert out_img.shape == (32, 32, 3) and out_label.shape == (32, 32)
    assert out_img.dtype == np.float32 and out_label.dtype == np.uint8
    inside = out_label == 7
    assert inside.sum() == 200 and (out_label[~inside] == 255).all()      # every pixel kept, rest filled
    assert ((out_img > 0).all(axis=2) == inside).all()                     # same box for both
    assert (out_img[~inside] == 0).all()
    rows, cols = np.nonzero(inside)
    placed = out_img[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    assert np.array_equal(placed, img)


def test_random_crop_cuts_large_images() -> None:
    img = np.arange(50 * 60, dtype=np.int32).reshape(50, 60)
    (out,) = imutils.random_crop([img], 32, (-1,), np.random.default_rng(0))
    top, left = divmod(int(out[0, 0]), 60)
    assert np.array_equal(out, img[top:top + 32, left:left + 32])


def test_random_crop_mixed_sizes_pad_one_side() -> None:
    img = np.ones((40, 20), np.uint8)                  # taller than the crop, narrower than it
    (out,) = imutils.random_crop([img], 32, (0,), np.random.default_rng(1))
    assert out.shape == (32, 32) and out.sum() == 32 * 20


# ----------------------------------------------------------------------------- IR labels

def test_cam_to_ir_label_three_regions() -> None:
    """Left: confident class; middle: between the thresholds (unknown); right: clearly background."""
    img = np.zeros((40, 50, 3), np.uint8)
    img[:, :17] = (220, 30, 30)
    img[:, 17:34] = (30, 30, 220)
    img[:, 34:] = (30, 200, 30)
    cams = np.zeros((1, 40, 50), np.float32)
    cams[0, :, :17] = 0.95
    cams[0, :, 17:34] = 0.45
    label = cam_to_ir_label(img, cams, np.array([7]), conf_fg_thres=0.6, conf_bg_thres=0.3)
    assert label.shape == (40, 50) and label.dtype == np.uint8
    assert set(np.unique(label)) <= {0, 8, 255}
    # interiors of the regions (the CRF may move a border by a pixel or two)
    assert (label[3:-3, 3:13] == 8).all()          # class 7 -> label 8
    assert (label[3:-3, 21:30] == 255).all()
    assert (label[3:-3, 38:-3] == 0).all()

    # torch inputs give the same answer
    again = cam_to_ir_label(torch.from_numpy(img), torch.from_numpy(cams), torch.tensor([7]), 0.6, 0.3)
    assert np.array_equal(again, label)


def test_cam_to_ir_label_two_classes() -> None:
    img = np.zeros((32, 40, 3), np.uint8)
    img[:, :20] = (200, 200, 40)
    img[:, 20:] = (40, 40, 200)
    cams = np.zeros((2, 32, 40), np.float32)
    cams[0, :, :20] = 0.9
    cams[1, :, 20:] = 0.8
    label = cam_to_ir_label(img, cams, np.array([2, 11]), conf_fg_thres=0.3, conf_bg_thres=0.05)
    assert (label[2:-2, 2:16] == 3).all() and (label[2:-2, 24:-2] == 12).all()


# ----------------------------------------------------------------------------- CAM fusion

@pytest.mark.parametrize('size', [(64, 64), (37, 50), (61, 45)])
def test_fuse_scales_shapes_and_normalisation(size: tuple[int, int]) -> None:
    generator = torch.Generator().manual_seed(0)
    h16, w16 = (size[0] - 1) // 16 + 1, (size[1] - 1) // 16 + 1
    outputs = [torch.rand(3, h16, w16, generator=generator),
               torch.rand(3, (h16 + 1) // 2, (w16 + 1) // 2, generator=generator),
               torch.rand(3, 2 * h16, 2 * w16, generator=generator)]
    strided, high_res = fuse_scales(outputs, size)
    assert strided.shape == (3, (size[0] - 1) // 4 + 1, (size[1] - 1) // 4 + 1)
    assert high_res.shape == (3,) + tuple(size)
    for cam in (strided, high_res):
        assert float(cam.min()) >= 0
        assert torch.allclose(cam.amax(dim=(1, 2)), torch.ones(3), atol=1e-4)   # each class on its own max


def test_fuse_scales_sums_the_scales() -> None:
    size = (61, 61)                                  # strided map 16 x 16: a 16 x 16 output is not resized
    base = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(1))
    strided, _ = fuse_scales([base], size)
    assert torch.allclose(strided, base / (base.amax(dim=(1, 2), keepdim=True) + 1e-5))
    doubled, _ = fuse_scales([base, base], size)      # identical scales: the same after normalising
    assert torch.allclose(doubled, strided, atol=1e-5)
    flat = torch.zeros(2, 16, 16)
    mixed, _ = fuse_scales([base, flat], size)        # an all-zero scale adds nothing
    assert torch.allclose(mixed, strided, atol=1e-6)


def test_compute_cams_with_a_small_network(synthetic_voc: Path) -> None:
    from net.resnet50_cam import Net

    torch.manual_seed(0)
    model = Net(backbone='resnet18', pretrained='none').eval()
    image_id = split_ids(synthetic_voc, 'train')[0]
    item = dataloader.MultiScaleDataset([image_id], synthetic_voc, None, (1.0, 0.5))[0]
    strided, high_res = compute_cams(model, item['img'], np.array([1, 6]), item['size'], torch.device('cpu'))
    assert strided.shape == (2, 16, 16) and high_res.shape == (2, 64, 64)
    assert strided.dtype == np.float32 and strided.min() >= 0 and strided.max() <= 1


# ----------------------------------------------------------------------------- random-walk masks

def test_sem_seg_from_edge_shape_and_values() -> None:
    rng = np.random.default_rng(0)
    cams = rng.random((2, 10, 12)).astype(np.float32)
    edge = (rng.random((10, 12)) * 0.3).astype(np.float32)
    keys = np.array([2, 9])
    label = sem_seg_from_edge(cams, edge, keys, (40, 47), exp_times=3, bg_thres=0.25)
    assert label.shape == (40, 47) and label.dtype == np.uint8
    assert set(np.unique(label)) <= {0, 3, 10}
    assert (sem_seg_from_edge(cams, edge, keys, (40, 47), exp_times=3, bg_thres=1.01) == 0).all()
    assert (sem_seg_from_edge(cams, edge, keys, (40, 47), exp_times=3, bg_thres=0.0) != 0).all()


def test_sem_seg_from_edge_stops_at_a_boundary() -> None:
    """A full-height boundary column splits the map: each class's CAM spreads only on its own side."""
    cams = np.zeros((2, 12, 16), np.float32)
    cams[0, 4:8, 1:4] = 0.3          # class A: a weak blob on the left
    cams[1, 4:8, 12:15] = 1.0        # class B: a strong blob on the right
    edge = np.zeros((12, 16), np.float32)
    edge[:, 8] = 1.0
    label = sem_seg_from_edge(cams, edge, np.array([0, 5]), (48, 64), beta=10, exp_times=6, bg_thres=0.05)
    assert (label[:, :24] == 1).all()           # whole left side (x4 upsampled) walked to class A
    assert (label[:, 40:] == 6).all()           # right side to class B
    # without the boundary the strong class floods the left side too
    open_map = sem_seg_from_edge(cams, np.zeros_like(edge), np.array([0, 5]), (48, 64), beta=10, exp_times=6,
                                 bg_thres=0.05)
    assert (open_map[:, :24] == 6).all()


# ----------------------------------------------------------------------------- affinity labels

def test_affinity_labels_hand_example() -> None:
    segm = np.array([[0, 0, 5], [5, 255, 0]], np.uint8)             # flat: 0 0 5 5 255 0
    indices_from = np.array([0, 2, 4])
    indices_to = np.array([[1, 3, 5], [2, 0, 1]])                   # (P=2, sources=3)
    bg_pos, fg_pos, neg = dataloader.GetAffinityLabelFromIndices(indices_from, indices_to)(segm)
    for t in (bg_pos, fg_pos, neg):
        assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.shape == (2, 3)
    assert bg_pos.tolist() == [[1, 0, 0], [0, 0, 0]]       # 0-0
    assert fg_pos.tolist() == [[0, 1, 0], [0, 0, 0]]       # 5-5
    assert neg.tolist() == [[0, 0, 0], [1, 1, 0]]          # 0-5, 5-0; pairs with 255 count nowhere


def test_affinity_labels_on_path_index() -> None:
    index = PathIndex(radius=5, default_size=(12, 12))
    extract = dataloader.GetAffinityLabelFromIndices(index.src_indices, index.dst_indices)
    shape = (len(index.search_dst), index.src_indices.size)
    bg, fg, neg = extract(np.zeros((12, 12), np.uint8))
    assert bg.shape == shape and bool((bg == 1).all()) and fg.sum() == 0 and neg.sum() == 0
    bg, fg, neg = extract(np.full((12, 12), 255, np.uint8))
    assert bg.sum() == fg.sum() == neg.sum() == 0
    halves = np.zeros((12, 12), np.uint8)
    halves[:, 6:] = 3
    bg, fg, neg = extract(halves)
    assert bool(((bg + fg + neg) == 1).all())                     # every valid pair is exactly one kind
    # a pair straddles the split exactly when its source and destination columns fall on different sides
    src_col = index.src_indices % 12
    dst_col = index.dst_indices % 12
    assert torch.equal(neg.bool(), torch.from_numpy((src_col[None] < 6) != (dst_col < 6)))


# ----------------------------------------------------------------------------- VOC lists and labels

def xml_label(path: Path) -> set[int]:
    return {CAT_NAME_TO_NUM[n.text.strip()] for n in ET.parse(path).getroot().iter('name')
            if n.text and n.text.strip() in CAT_NAME_TO_NUM}


def test_load_image_labels_matches_xml_and_caches(synthetic_voc: Path, tmp_path: Path) -> None:
    ids = split_ids(synthetic_voc, 'train') + split_ids(synthetic_voc, 'val')
    labels = dataloader.load_image_labels(synthetic_voc, ids, tmp_path / 'cache')
    assert list(labels) == ids
    for image_id in ids:
        vector = labels[image_id]
        assert vector.shape == (N_CAT,) and vector.dtype == np.float32
        assert set(np.nonzero(vector)[0].tolist()) == xml_label(synthetic_voc / 'Annotations' / f'{image_id}.xml')
        assert vector.sum() >= 1
    cache = tmp_path / 'cache' / 'cls_labels.npz'
    assert cache.is_file()
    with np.load(cache) as stored:                                 # plain arrays, no pickles
        assert sorted(stored['ids'].tolist()) == sorted(ids) and stored['labels'].shape == (len(ids), N_CAT)

    # the second call reads the cache: it works with a root that holds no annotations at all
    again = dataloader.load_image_labels(tmp_path / 'no_such_root', ids[:5], tmp_path / 'cache')
    assert all(np.array_equal(again[i], labels[i]) for i in ids[:5])
    with pytest.raises(BadInputError, match='not_cached'):
        dataloader.load_image_labels(tmp_path / 'no_such_root', ['not_cached'], tmp_path / 'cache')


def test_load_image_labels_falls_back_to_masks(synthetic_voc: Path, tmp_path: Path) -> None:
    ids = split_ids(synthetic_voc, 'val')[:4]
    root = tmp_path / 'masks_only'
    (root / 'SegmentationClass').mkdir(parents=True)
    for image_id in ids:
        name = f'{image_id}.png'
        (root / 'SegmentationClass' / name).write_bytes((synthetic_voc / 'SegmentationClass' / name).read_bytes())
    from_masks = dataloader.load_image_labels(root, ids)
    from_xml = dataloader.load_image_labels(synthetic_voc, ids)
    assert all(np.array_equal(from_masks[i], from_xml[i]) for i in ids)


def test_resolve_list(synthetic_voc: Path, tmp_path: Path) -> None:
    train, val = split_ids(synthetic_voc, 'train'), split_ids(synthetic_voc, 'val')
    assert len(train) == 16 and len(val) == 8
    assert dataloader.resolve_list('train', 'val', synthetic_voc) == train
    assert dataloader.resolve_list(None, 'val', synthetic_voc) == val
    list_file = tmp_path / 'mine.txt'
    list_file.write_text('\n'.join(val[:3]) + '\n')
    assert dataloader.resolve_list(str(list_file), 'train', synthetic_voc) == val[:3]
    # train_aug without SBD: Main/trainval minus Segmentation val
    main = set((synthetic_voc / 'ImageSets' / 'Main' / 'trainval.txt').read_text().split())
    assert set(dataloader.resolve_list('train_aug', 'train', synthetic_voc)) == main - set(val)


def test_resolve_list_errors(synthetic_voc: Path, tmp_path: Path) -> None:
    ids = split_ids(synthetic_voc, 'train')
    missing = tmp_path / 'missing.txt'
    missing.write_text('\n'.join(ids[:2] + ['2099_999999']) + '\n')
    with pytest.raises(BadInputError, match='2099_999999'):
        dataloader.resolve_list(str(missing), 'train', synthetic_voc)
    empty = tmp_path / 'empty.txt'
    empty.write_text('\n\n')
    with pytest.raises(BadInputError, match='empty'):
        dataloader.resolve_list(str(empty), 'train', synthetic_voc)
    with pytest.raises(BadInputError, match='training'):
        dataloader.resolve_list('training', 'train', synthetic_voc)
    with pytest.raises(BadInputError):
        dataloader.resolve_list('train', 'train', tmp_path)         # no ImageSets there


# ----------------------------------------------------------------------------- datasets

def test_multiscale_dataset_items(synthetic_voc: Path, tmp_path: Path) -> None:
    ids = split_ids(synthetic_voc, 'train')[:3]
    labels = dataloader.load_image_labels(synthetic_voc, ids, tmp_path)
    dataset = dataloader.MultiScaleDataset(ids, synthetic_voc, labels, scales=(1.0, 0.5, 1.5))
    assert len(dataset) == 3
    item = dataset[1]
    assert item['name'] == ids[1] and item['size'] == (64, 64)
    assert [tuple(x.shape) for x in item['img']] == [(2, 3, 64, 64), (2, 3, 32, 32), (2, 3, 96, 96)]
    for pair in item['img']:
        assert pair.dtype == torch.float32
        assert torch.equal(pair[1], pair[0].flip(-1))               # second of each pair is the flip
    expected = imutils.hwc_to_chw(imutils.normalize(imutils.read_rgb(synthetic_voc / 'JPEGImages' / f'{ids[1]}.jpg')))
    assert np.allclose(item['img'][0][0].numpy(), expected)
    assert torch.equal(item['label'], torch.from_numpy(labels[ids[1]]))
    assert 'label' not in dataloader.MultiScaleDataset(ids, synthetic_voc)[0]


def test_affinity_dataset_items(synthetic_voc: Path) -> None:
    ids = split_ids(synthetic_voc, 'train')[:4]
    crop = 96
    index = PathIndex(radius=10, default_size=(crop // 4, crop // 4))
    dataset = dataloader.AffinityDataset(ids, synthetic_voc, synthetic_voc / 'SegmentationClass', crop,
                                         index.src_indices, index.dst_indices, rescale=(0.5, 1.5), seed=0)
    item = dataset[0]
    assert set(item) == {'name', 'img', 'aff_bg_pos_label', 'aff_fg_pos_label', 'aff_neg_label'}
    assert item['name'] == ids[0]
    assert item['img'].shape == (3, crop, crop) and item['img'].dtype == torch.float32
    pairs = (len(index.search_dst), index.src_indices.size)
    labels = [item[k] for k in ('aff_bg_pos_label', 'aff_fg_pos_label', 'aff_neg_label')]
    for t in labels:
        assert t.shape == pairs and t.dtype == torch.float32 and set(t.unique().tolist()) <= {0.0, 1.0}
    total = sum(labels)
    assert total.max() <= 1                              # the three kinds never overlap
    assert labels[0].sum() > 0 and labels[1].sum() > 0   # synthetic images have background and objects

    again = dataset[0]                                   # the same (seed, epoch, index): the same sample
    assert torch.equal(again['img'], item['img']) and torch.equal(again['aff_neg_label'], item['aff_neg_label'])
    dataset.set_epoch(1)
    assert not torch.equal(dataset[0]['img'], item['img'])


def test_paired_difference_mean_sd_and_t_interval():
    from misc.metrics import paired_difference
    result = paired_difference([0.52, 0.50, 0.55, 0.49, None], [0.50, 0.50, 0.50, 0.50, 0.40])
    diffs = np.array([0.02, 0.0, 0.05, -0.01])                  # the pair with a None is left out
    assert result['n'] == 4
    assert result['mean'] == pytest.approx(diffs.mean())
    assert result['sd'] == pytest.approx(diffs.std(ddof=1))
    half_width = 3.182446305284263 * diffs.std(ddof=1) / 2     # t(3) at 97.5%, sqrt(4)
    assert result['low'] == pytest.approx(diffs.mean() - half_width)
    assert result['high'] == pytest.approx(diffs.mean() + half_width)
    single = paired_difference([0.3], [0.1])
    assert single['n'] == 1 and single['mean'] == pytest.approx(0.2) and np.isnan(single['sd'])
    assert paired_difference([None], [0.1]) is None
