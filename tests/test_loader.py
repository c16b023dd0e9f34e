"""Compact training samples (uint8 until the device) against today's float32 samples, the batched pair labels
against GetAffinityLabelFromIndices, the device normalisation against imutils.normalize, and the loader's
persistent workers seeing set_epoch."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, default_collate

from misc import device_input, imutils
from misc.cda import ObjectBank
from misc.config import Config
from misc.crf import save_crf_maps
from misc.indexing import PathIndex, pair_indices
from step import common, make_object_bank
from voc12 import dataloader
from voc12.aff_dataset import CrfAffinityDataset
from voc12.cda_dataset import CDAClassificationDataset

CPU = torch.device('cpu')
DEVICES = [CPU] + ([torch.device('cuda')] if torch.cuda.is_available() else [])
JITTER = (0.3, 0.3, 0.3, 0.1)


def random_label_maps(rng: np.random.Generator, shape) -> np.ndarray:
    """Label maps of background, a few classes and 255 (ignore), in blobs and noise."""
    maps = rng.choice(np.array([0, 0, 1, 3, 20, 255], np.uint8), size=shape)
    maps[..., : shape[-2] // 3, :] = 255                    # a band of ignore, as a crop's padding
    return maps


# ----------------------------------------------------------------------------- device side

@pytest.mark.parametrize('device', DEVICES, ids=str)
def test_device_normalisation_equals_the_cpu_one_for_every_value(device):
    """Exhaustive: normalisation is elementwise, so all 256 values in each channel cover every input."""
    values = np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None, None], (256, 2, 3)).copy()    # (H, W, 3)
    expected = imutils.hwc_to_chw(imutils.normalize(values))
    out = device_input.expand_image(torch.from_numpy(values)[None].to(device))
    assert out.dtype == torch.float32 and out.is_contiguous()
    assert torch.equal(out[0].cpu(), torch.from_numpy(expected))


@pytest.mark.parametrize('device', DEVICES, ids=str)
def test_validity_rectangle_zeroes_the_padding(device):
    img = torch.full((2, 6, 5, 3), 200, dtype=torch.uint8, device=device)
    valid = torch.tensor([[1, 4, 0, 5], [0, 6, 2, 3]], device=device)
    out = device_input.expand_image(img, valid).cpu()
    inside = torch.zeros(2, 1, 6, 5, dtype=torch.bool)
    inside[0, :, 1:4, :] = True
    inside[1, :, :, 2:3] = True
    assert torch.equal(out == 0, ~inside.expand_as(out))
    assert torch.equal(out[0, :, 1, 0], out[1, :, 0, 2])    # inside: the same normalised colour


@pytest.mark.parametrize('device', DEVICES, ids=str)
@pytest.mark.parametrize('pairs', ['irn_r10', 'psa_r5', 'psa_r5_wide', 'scattered'])
def test_pair_labels_equal_get_affinity_label_from_indices(pairs, device):
    rng = np.random.default_rng(11)
    if pairs == 'irn_r10':
        index = PathIndex(radius=10, default_size=(32, 32))
        src, dst, shape = index.src_indices, index.dst_indices, (32, 32)
    elif pairs == 'psa_r5':
        (src, dst), shape = pair_indices(5, 12), (12, 12)
    elif pairs == 'psa_r5_wide':
        (src, dst), shape = pair_indices(5, (9, 17)), (9, 17)
    else:                                                    # not windows: the gather path
        src = rng.choice(12 * 14, size=40, replace=False)
        dst = rng.integers(0, 12 * 14, size=(7, 40))
        shape = (12, 14)
    labels = device_input.PairLabels(src, dst)
    assert (labels.windows(*shape) is None) == (pairs == 'scattered')
    maps = random_label_maps(rng, (5,) + shape)
    got = labels(torch.from_numpy(maps).to(device))
    old = dataloader.GetAffinityLabelFromIndices(src, dst)
    for i, label_map in enumerate(maps):
        for new, ref in zip(got, old(label_map)):
            assert new.dtype == torch.float32 and torch.equal(new[i].cpu(), ref)
    assert sum(x.sum() for x in got) > 0


def test_to_device_passes_float_batches_through():
    batch = {'img': torch.randn(2, 3, 8, 8), 'label': torch.ones(2, 20),
             'aff_bg_pos_label': torch.ones(2, 4, 5), 'name': ['a', 'b']}
    out = device_input.to_device(batch, CPU)
    assert out['img'] is batch['img'] and out['aff_bg_pos_label'] is batch['aff_bg_pos_label']
    assert out['name'] == ['a', 'b']
    with pytest.raises(ValueError, match='pair_labels'):
        device_input.to_device({'img': torch.zeros(1, 4, 4, 3, dtype=torch.uint8),
                                'pair_label_map': torch.zeros(1, 4, 4, dtype=torch.uint8)}, CPU)


# ----------------------------------------------------------------------------- compact samples

@pytest.fixture(scope='module')
def ids_labels(synthetic_voc):
    ids = (synthetic_voc / 'ImageSets' / 'Segmentation' / 'train.txt').read_text().split()
    return ids, dataloader.load_image_labels(synthetic_voc, ids)


@pytest.fixture(scope='module')
def bank(synthetic_voc, tmp_path_factory) -> ObjectBank:
    work = tmp_path_factory.mktemp('bank')
    cfg = Config(work_dir=work, voc12_root=synthetic_voc, cda_bank_source=synthetic_voc / 'SegmentationClass')
    make_object_bank.run(cfg)
    return ObjectBank.load(cfg.object_bank_dir)


def assert_same_samples(make, epochs=(0, 2), modes=('compact', 'deferred')):
    """Today's samples of `make()` equal the compact ones, and the deferred ones (rendered by the device's
    resize and jitter), expanded on the CPU, for every index and epoch."""
    for mode in modes:
        today, compact = make(), make()
        compact.compact, compact.deferred = True, mode == 'deferred'
        for epoch in epochs:
            today.set_epoch(epoch)
            compact.set_epoch(epoch)
            for index in range(len(today)):
                old = today[index]
                new = compact[index]
                if mode == 'deferred' and 'img_src' in new:
                    assert 'img' not in new and new['img_src'].dtype == torch.uint8
                else:
                    assert new['img'].dtype == torch.uint8
                new = device_input.to_device(device_input.collate([new]), CPU, getattr(compact, 'pair_labels', None))
                for key, value in old.items():
                    if isinstance(value, torch.Tensor):
                        assert new[key][0].dtype == value.dtype and torch.equal(new[key][0], value), \
                            (mode, epoch, index, key)
                    else:
                        assert new[key][0] == value, (mode, epoch, index, key)


@pytest.mark.parametrize('crop, resize_long, jitter', [(64, (48, 80), None), (40, (48, 80), None),
                                                       (64, (48, 96), JITTER)], ids=['pad', 'inside', 'jitter'])
def test_classification_samples(synthetic_voc, ids_labels, crop, resize_long, jitter):
    ids, labels = ids_labels
    assert_same_samples(lambda: dataloader.ClassificationDataset(ids, synthetic_voc, labels, resize_long, crop,
                                                                 seed=3, jitter=jitter))


@pytest.mark.parametrize('variant, min_visible, jitter', [('rotate', 0.0, None), ('scale', 0.5, JITTER)])
def test_cda_samples(synthetic_voc, ids_labels, bank, variant, min_visible, jitter):
    ids, labels = ids_labels
    assert_same_samples(lambda: CDAClassificationDataset(ids, synthetic_voc, labels, bank, (48, 80), 64, seed=1,
                                                         variant=variant, min_visible=min_visible, jitter=jitter))


@pytest.mark.parametrize('crop, rescale', [(96, (0.5, 1.5)), (80, (1.3, 1.5))], ids=['pad', 'inside'])
def test_irn_samples(synthetic_voc, ids_labels, crop, rescale):
    index = PathIndex(radius=10, default_size=(crop // 4, crop // 4))
    assert_same_samples(lambda: dataloader.AffinityDataset(ids_labels[0], synthetic_voc,
                                                           synthetic_voc / 'SegmentationClass', crop,
                                                           index.src_indices, index.dst_indices, rescale, seed=4))


@pytest.fixture(scope='module')
def wide_voc(synthetic_voc, ids_labels, tmp_path_factory):
    """Four of the images (and masks) resized to 72 x 120: crops of 80 pad the height and cut the width."""
    root = tmp_path_factory.mktemp('wide_voc')
    for image_id in ids_labels[0][:4]:
        img = imutils.read_rgb(synthetic_voc / 'JPEGImages' / f'{image_id}.jpg')
        mask = imutils.read_label_png(synthetic_voc / 'SegmentationClass' / f'{image_id}.png')
        imutils.save_rgb(root / 'JPEGImages' / f'{image_id}.jpg', imutils.pil_resize(img, (72, 120), 3))
        imutils.save_label_png(root / 'SegmentationClass' / f'{image_id}.png', imutils.pil_resize(mask, (72, 120), 0))
    return root


def write_soft_crf_maps(root, ids, out):
    """Soft la/ha maps (float16, compressed, as make_crf_labels writes them) from the ground truth."""
    import cv2
    for image_id in ids:
        mask = imutils.read_label_png(root / 'SegmentationClass' / f'{image_id}.png')
        keys = np.array(sorted(set(np.unique(mask).tolist()) - {0, 255}), np.int64)
        onehot = np.stack([(mask == 0) | (mask == 255)] + [mask == k for k in keys]).astype(np.float32)
        soft = np.stack([cv2.GaussianBlur(c, (0, 0), 3) for c in onehot]) + 1e-3
        la = soft / soft.sum(axis=0)
        ha = la ** np.array([0.5] + [1.0] * len(keys), np.float32)[:, None, None]
        save_crf_maps(out / f'{image_id}.npz', keys - 1, la, ha / ha.sum(axis=0))
    return out


@pytest.mark.parametrize('where, crop', [('square', 80), ('square', 72), ('wide', 80)])
def test_affinitynet_samples(synthetic_voc, wide_voc, ids_labels, tmp_path, where, crop):
    root = synthetic_voc if where == 'square' else wide_voc
    ids = ids_labels[0] if where == 'square' else ids_labels[0][:4]
    crf_dir = write_soft_crf_maps(root, ids, tmp_path)
    assert_same_samples(lambda: CrfAffinityDataset(ids, root, crf_dir, crop_size=crop, seed=2))


def test_wide_images_irn_and_cam(wide_voc, ids_labels):
    ids, labels = ids_labels[0][:4], ids_labels[1]
    index = PathIndex(radius=10, default_size=(20, 20))
    assert_same_samples(lambda: dataloader.AffinityDataset(ids, wide_voc, wide_voc / 'SegmentationClass', 80,
                                                           index.src_indices, index.dst_indices, (0.9, 1.1), seed=1))
    assert_same_samples(lambda: dataloader.ClassificationDataset(ids, wide_voc, labels, (100, 130), 80, seed=1))


def test_compact_samples_are_small(synthetic_voc, ids_labels):
    index = PathIndex(radius=10, default_size=(24, 24))
    dataset = dataloader.AffinityDataset(ids_labels[0], synthetic_voc, synthetic_voc / 'SegmentationClass', 96,
                                         index.src_indices, index.dst_indices)
    old = sum(v.numel() * v.element_size() for v in dataset[0].values() if isinstance(v, torch.Tensor))
    dataset.compact = True
    item = dataset[0]
    assert set(item) == {'name', 'img', 'img_valid', 'pair_label_map'}
    assert item['img'].shape == (96, 96, 3) and item['pair_label_map'].shape == (24, 24)
    new = sum(v.numel() * v.element_size() for v in item.values() if isinstance(v, torch.Tensor))
    assert new * 8 < old                                 # 28 kB against 274 kB


# ----------------------------------------------------------------------------- the loader

def test_train_loader_goes_compact_with_workers_reseeded_each_epoch(synthetic_voc, ids_labels, tmp_path):
    ids, labels = ids_labels
    cfg = Config(work_dir=tmp_path, voc12_root=synthetic_voc, num_workers=1, seed=5)
    dataset = dataloader.ClassificationDataset(ids, synthetic_voc, labels, (48, 80), 64, seed=5)
    loader = common.train_loader(dataset, 4, cfg)
    assert dataset.compact and not loader.persistent_workers and loader.worker_init_fn is common.init_train_worker
    reference = dataloader.ClassificationDataset(ids, synthetic_voc, labels, (48, 80), 64, seed=5)
    for epoch in (0, 1, 2):                  # set_epoch reaches the workers
        dataset.set_epoch(epoch)
        reference.set_epoch(epoch)
        loader.sampler.set_epoch(epoch)
        order = list(loader.sampler)
        for step, batch in enumerate(loader):
            batch = device_input.to_device(batch, CPU)
            expected = torch.stack([reference[i]['img'] for i in order[step * 4:(step + 1) * 4]])
            assert torch.equal(batch['img'], expected), (epoch, step)
    plain = common.train_loader(dataloader.ClassificationDataset(ids, synthetic_voc, labels), 4,
                                Config(work_dir=tmp_path, voc12_root=synthetic_voc, num_workers=0), compact=False)
    assert not plain.dataset.compact and not plain.persistent_workers


@pytest.mark.parametrize('augment_on_device', [True, False])
def test_train_loader_defers_the_augmentation_to_a_gpu(synthetic_voc, ids_labels, tmp_path, monkeypatch,
                                                       augment_on_device):
    """On a CUDA run (device_of patched: this test runs anywhere) the workers send decoded images and their
    draws, collated as lists, and to_device renders the same batches as the compact path's; with
    --no-augment_on_device the samples stay compact."""
    ids, labels = ids_labels
    monkeypatch.setattr(common, 'device_of', lambda cfg: torch.device('cuda'))
    cfg = Config(work_dir=tmp_path, voc12_root=synthetic_voc, num_workers=1, seed=5,
                 augment_on_device=augment_on_device)
    make = lambda: dataloader.ClassificationDataset(ids, synthetic_voc, labels, (48, 80), 64, seed=5,  # noqa: E731
                                                    jitter=JITTER)
    dataset, reference = make(), make()
    loader = common.train_loader(dataset, 4, cfg)
    assert dataset.compact and dataset.deferred == augment_on_device
    reference.compact = True
    order = list(loader.sampler)
    for step, batch in enumerate(loader):
        if augment_on_device:
            assert isinstance(batch['img_src'], list) and 'img' not in batch
        batch = device_input.to_device(batch, CPU)
        expected = device_input.to_device(default_collate([reference[i] for i in order[step * 4:(step + 1) * 4]]),
                                          CPU)
        assert torch.equal(batch['img'], expected['img']), step
        assert not any(key.endswith(device_input.DEFERRED_SUFFIXES) for key in batch)


def test_worker_init_sets_one_opencv_thread():
    import cv2
    before = cv2.getNumThreads()
    try:
        common.init_train_worker(0)
        assert cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(before)


def test_workers_start_after_opencv_threads_slept(synthetic_voc, tmp_path):
    """Regression: a forked worker that resized OpenCV's pool inherited asleep hung for ever (full suite)."""
    import subprocess
    import sys
    from pathlib import Path
    script = tmp_path / 'fork_after_cv2.py'
    script.write_text(f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
import cv2, numpy as np
from misc.config import Config
from step import common
from voc12 import dataloader
cv2.setNumThreads(2)
img = np.zeros((1500, 1500, 3), np.uint8)
for _ in range(3):
    cv2.GaussianBlur(cv2.resize(img, (2500, 2500)), (0, 0), 5)
time.sleep(1)                                       # the pool's threads go to sleep on their condition variable
root = {str(synthetic_voc)!r}
ids = dataloader.resolve_list('train', 'train', root)[:4]
labels = dataloader.load_image_labels(root, ids)
dataset = dataloader.ClassificationDataset(ids, root, labels, (48, 80), 64)
cfg = Config(work_dir={str(tmp_path)!r}, voc12_root=root, num_workers=1)
batch = next(iter(common.train_loader(dataset, 2, cfg)))
print('batch', tuple(batch['img'].shape))
""")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == 'batch (2, 64, 64, 3)'


def test_epoch_is_shared_with_forked_workers(synthetic_voc, ids_labels):
    ids, labels = ids_labels
    dataset = dataloader.ClassificationDataset(ids[:4], synthetic_voc, labels, (48, 80), 64, seed=0)
    loader = DataLoader(dataset, batch_size=4, num_workers=1, persistent_workers=True)
    first = next(iter(loader))['img']
    dataset.set_epoch(1)
    second = next(iter(loader))['img']
    assert dataset.epoch == 1 and not torch.equal(first, second)
    assert torch.equal(second, torch.stack([dataset[i]['img'] for i in range(4)]))


# ----------------------------------------------------------------------------- the segmentation network's samples

@pytest.mark.parametrize('bgr_mean, crop', [(True, 96), (False, 96), (True, 40)], ids=['bgr-pad', 'imagenet-pad',
                                                                                       'bgr-inside'])
def test_deferred_seg_samples_equal_todays(synthetic_voc, ids_labels, bgr_mean, crop):
    """The segmentation network's deferred samples (OpenCV's float bilinear rescale of the crop's window on the
    device, misc.cv_resize) against `augment_for_seg`: the labels identical, the input within cv_resize's
    stated tolerance (0 on the CPUs it was measured on)."""
    from misc.cv_resize import CV2_ATOL
    from voc12.seg_dataset import SegTrainDataset, render_deferred
    ids = ids_labels[0]
    make = lambda: SegTrainDataset(ids, synthetic_voc, synthetic_voc / 'SegmentationClass', crop,  # noqa: E731
                                   (0.5, 0.75, 1.0, 1.25, 1.5), bgr_mean, seed=3)
    today, deferred = make(), make()
    deferred.deferred = True
    for key in [(index, iteration, slot) for index in range(len(ids)) for iteration, slot in ((0, 0), (7, 3))]:
        old, new = today[key], deferred[key]
        assert 'img' not in new and new['seg_src'].dtype == torch.uint8
        batch = device_input.collate([new])
        img, label = render_deferred(batch, CPU, crop, bgr_mean)
        assert torch.equal(label[0], old['label']), key
        assert img[0].shape == old['img'].shape and float((img[0] - old['img']).abs().max()) <= CV2_ATOL, key


def test_nearest_label_indices_are_pils_in_two_dimensions():
    """PIL's nearest resize is separable: the per-axis source positions reproduce it on random sizes."""
    _nearest_indices = imutils.pil_nearest_indices
    rng = np.random.default_rng(6)
    for _ in range(60):
        height, width, out_h, out_w = (int(v) for v in rng.integers(1, 300, 4))
        label = rng.integers(0, 256, (height, width), dtype=np.uint8)
        expected = np.asarray(Image.fromarray(label).resize((out_w, out_h), Image.NEAREST))
        got = label[_nearest_indices(height, out_h)][:, _nearest_indices(width, out_w)]
        assert np.array_equal(got, expected), (height, width, out_h, out_w)


def test_fast_rgb_reader_gives_read_rgbs_pixels(tmp_path):
    """OpenCV's decode of RGB JPEGs (the deferred samples') equals Pillow's on every kind of JPEG the
    encoders write; grayscale JPEGs, PNGs and EXIF-rotated files take read_rgb's own conversions."""
    import io
    rng = np.random.default_rng(7)
    base = (rng.random((20, 30, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(base).resize((157, 211), Image.BICUBIC)
    variants = [dict(quality=75), dict(quality=95, subsampling=0), dict(quality=90, subsampling=1),
                dict(quality=50, progressive=True), dict(quality=85, optimize=True)]
    paths = []
    for i, options in enumerate(variants):
        paths.append(tmp_path / f'rgb{i}.jpg')
        image.save(paths[-1], 'JPEG', **options)
    paths.append(tmp_path / 'gray.jpg')
    image.convert('L').save(paths[-1], 'JPEG')
    paths.append(tmp_path / 'plain.png')
    image.save(paths[-1])
    exif = Image.Exif()
    exif[0x0112] = 6                                      # rotate 90: Pillow (and read_rgb) ignore it
    paths.append(tmp_path / 'rotated.jpg')
    image.save(paths[-1], 'JPEG', exif=exif.tobytes())
    for path in paths:
        assert np.array_equal(imutils.read_rgb_fast(path), imutils.read_rgb(path)), path.name
    (tmp_path / 'broken.jpg').write_bytes(b'\xff\xd8\xff\xe0 not a jpeg')
    with pytest.raises(imutils.BadInputError, match='broken.jpg'):
        imutils.read_rgb_fast(tmp_path / 'broken.jpg')
