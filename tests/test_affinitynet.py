"""AffinityNet (PSA) steps: pair indexing, pair labels, soft CRF, loss, sparse walk, network, datasets, steps.

The dense reference walk here is the reference's computation written out (symmetric W with unit diagonal,
raised to beta, column-normalised, squared logt times), in float64 on maps small enough for N x N.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from misc.crf import alpha_crf_marginals, confident_pixel_label, crf_inference_soft, crf_labels_one_image
from misc.indexing import _search_directions, affinity_random_walk, pair_indices, pairs_transition
from misc.imutils import read_label_png, save_rgb
from net.resnet38 import ResNet38
from net.resnet38_aff import Net, affinity_loss, affinity_loss_terms, build_net, pair_affinity
from step.make_sem_seg_aff import (denormalized_uint8, label_from_walk, pooled_scores, sem_seg_from_affinity,
                                   walk_radius)
from voc12.aff_dataset import CrfAffinityDataset, block_mean, confident_label
from voc12.dataloader import affinity_labels_in_radius

TINY = 0.0625


# ----------------------------------------------------------------------------- pair_indices

def test_pair_indices_radius_5_has_34_offsets_in_the_reference_order():
    directions = _search_directions(5)
    assert len(directions) == 34
    assert directions[:4] == [(0, 1), (0, 2), (0, 3), (0, 4)]
    assert directions[4] == (1, -4) and directions[-1] == (4, 2)
    src, dst = pair_indices(5, (12, 14))
    assert src.dtype == dst.dtype == np.int64
    assert dst.shape == (34, src.size) and src.size == (12 - 4) * (14 - 8)
    width = 14
    for d, (dy, dx) in enumerate(directions):
        np.testing.assert_array_equal(dst[d], src + dy * width + dx)


def test_pair_indices_hand_case():
    src, dst = pair_indices(5, (5, 9))
    np.testing.assert_array_equal(src, [4])
    expected = [5, 6, 7, 8] + list(range(9, 18)) + list(range(18, 27)) + list(range(28, 35)) + list(range(38, 43))
    np.testing.assert_array_equal(dst[:, 0], expected)
    src_int, dst_int = pair_indices(5, 12)
    src_tuple, dst_tuple = pair_indices(5, (12, 12))
    np.testing.assert_array_equal(src_int, src_tuple)
    np.testing.assert_array_equal(dst_int, dst_tuple)
    with pytest.raises(ValueError):
        pair_indices(5, (8, 8))


# ----------------------------------------------------------------------------- pair labels

def test_affinity_labels_hand_case():
    label = np.zeros((9, 9), np.uint8)
    label[:, 6:] = 1
    label[2, 2] = 255
    bg_pos, fg_pos, neg = (np.asarray(a) for a in affinity_labels_in_radius(label, radius=5))
    assert bg_pos.shape == fg_pos.shape == neg.shape == (34, 5)
    assert fg_pos.sum() == 0
    neg_rows = {1, 2, 3, 10, 11, 12, 19, 20, 21, 27, 28, 33}       # the offsets with dx >= 2 reach column 6
    assert set(np.nonzero(neg.any(axis=1))[0]) == neg_rows and neg.sum() == 60
    assert bg_pos.sum() == 108 and bg_pos[6, 1] == 0 and bg_pos[15, 0] == 0
    assert not np.any((bg_pos + neg) > 1)


def test_affinity_labels_two_classes_are_negative_and_ignore_drops_pairs():
    rng = np.random.default_rng(0)
    label = rng.choice(np.array([0, 1, 2, 255], np.uint8), size=(12, 12), p=(0.5, 0.2, 0.2, 0.1))
    bg_pos, fg_pos, neg = (np.asarray(a) for a in affinity_labels_in_radius(label))
    src, dst = pair_indices(5, 12)
    a, b = label.reshape(-1)[src][None], label.reshape(-1)[dst]
    valid = (a != 255) & (b != 255)
    np.testing.assert_array_equal(bg_pos, (valid & (a == 0) & (b == 0)).astype(np.float32))
    np.testing.assert_array_equal(fg_pos, (valid & (a == b) & (a > 0)).astype(np.float32))
    np.testing.assert_array_equal(neg, (valid & (a != b)).astype(np.float32))


# ----------------------------------------------------------------------------- CRF

def two_region_image() -> np.ndarray:
    img = np.zeros((24, 32, 3), np.uint8)
    img[:, :16] = (200, 40, 40)
    img[:, 16:] = (30, 60, 200)
    return img


def test_crf_inference_soft_returns_normalised_marginals():
    probs = np.full((2, 24, 32), 0.5, np.float32)
    probs[1, :, 16:] = 0.9
    probs[0, :, 16:] = 0.1
    q = crf_inference_soft(two_region_image(), probs, t=10)
    assert q.shape == (2, 24, 32) and q.dtype == np.float32
    np.testing.assert_allclose(q.sum(axis=0), 1, atol=1e-5)
    assert (q.argmax(0)[:, 18:] == 1).all()          # the confident side stays class 1


def test_alpha_controls_the_background():
    cams = np.zeros((1, 24, 32), np.float32)
    cams[0, :, 16:] = 0.6
    cams[0, :, :16] = 0.1
    low = alpha_crf_marginals(two_region_image(), cams, 4)
    high = alpha_crf_marginals(two_region_image(), cams, 32)
    assert low.shape == high.shape == (2, 24, 32)
    assert (low[0] >= high[0] - 1e-6).all()                  # low alpha: more background
    assert (high.argmax(0)[:, 16:] == 1).all()


def test_crf_labels_worker_writes_float16_maps(tmp_path):
    save_rgb(tmp_path / 'a.png', two_region_image())
    cams = np.zeros((1, 24, 32), np.float32)
    cams[0, :, 16:] = 1
    np.savez(tmp_path / 'cam.npz', keys=np.array([6]), high_res=cams, cam=cams[:, ::4, ::4])
    crf_labels_one_image(('a', tmp_path / 'a.png', tmp_path / 'cam.npz', tmp_path / 'crf' / 'a.npz', 4, 32,
                          tmp_path / 'ir' / 'a.png'))
    label = read_label_png(tmp_path / 'ir' / 'a.png')
    assert (label[:, 20:] == 7).all() and (label[:, :12] == 0).all()
    with np.load(tmp_path / 'crf' / 'a.npz') as data:
        assert data['la'].dtype == data['ha'].dtype == np.float16
        assert data['la'].shape == data['ha'].shape == (2, 24, 32)
        np.testing.assert_array_equal(data['keys'], [6])
        np.testing.assert_allclose(data['ha'].astype(np.float32).sum(0), 1, atol=2e-3)


def test_confident_pixel_label_maps_keys():
    la = np.array([[[0.6, 0.2, 0.1]], [[0.3, 0.7, 0.1]], [[0.1, 0.1, 0.8]]], np.float32)   # bg, fg1, fg2
    ha = np.array([[[0.3, 0.6, 0.1]], [[0.6, 0.3, 0.1]], [[0.1, 0.1, 0.8]]], np.float32)   # fg1, bg, fg2
    np.testing.assert_array_equal(confident_pixel_label(la, ha, np.array([2, 14])), [[255, 0, 15]])


# ----------------------------------------------------------------------------- loss

def test_loss_at_one_half_is_ln_2():
    labels = affinity_labels_in_radius(np.random.default_rng(1).choice(
        np.array([0, 1, 2, 255], np.uint8), size=(12, 12)))
    bg_pos, fg_pos, neg = (l[None] for l in labels)
    loss = affinity_loss(torch.full_like(bg_pos, 0.5), bg_pos, fg_pos, neg)
    assert loss.shape == () and loss.item() == pytest.approx(-math.log(0.50001), abs=1e-6)
    _, parts = affinity_loss_terms(torch.full_like(bg_pos, 0.5), bg_pos, fg_pos, neg)
    for value in parts.values():
        assert value == pytest.approx(-math.log(0.50001), abs=1e-6)


def test_loss_with_global_counts_sums_to_the_full_batch_loss():
    rng = np.random.default_rng(2)
    aff = torch.tensor(rng.uniform(0.05, 0.95, (4, 34, 32)), dtype=torch.float32, requires_grad=True)
    labels = [torch.stack([affinity_labels_in_radius(rng.choice(np.array([0, 1, 2, 255], np.uint8), size=(12, 12)))[k]
                           for _ in range(4)]) for k in range(3)]
    full = affinity_loss(aff, *labels)
    full.backward()
    grad_full = aff.grad.clone()
    aff.grad = None
    counts = torch.stack([label.sum() for label in labels])
    halves = [affinity_loss_terms(aff[i:i + 2], *(label[i:i + 2] for label in labels), pair_counts=counts,
                                  world=2)[0] for i in (0, 2)]
    (sum(halves) / 2).backward()          # DDP averages the ranks' gradients
    assert (sum(halves) / 2).item() == pytest.approx(full.item(), rel=1e-6)
    torch.testing.assert_close(aff.grad, grad_full)


def test_loss_without_foreground_pairs_has_no_fg_term():
    bg = torch.zeros(1, 34, 8)
    bg[0, :, :4] = 1
    fg, neg = torch.zeros_like(bg), torch.zeros_like(bg)
    neg[0, :, 4:] = 1
    aff = torch.full_like(bg, 0.9)
    _, parts = affinity_loss_terms(aff, bg, fg, neg)
    assert parts['fg'] == 0
    assert parts['bg'] == pytest.approx(-math.log(0.90001), rel=1e-5)


# ----------------------------------------------------------------------------- walk

def dense_walk(aff, src, dst, n, scores, beta, logt) -> np.ndarray:
    w = np.eye(n)
    for p in range(dst.shape[0]):
        for k in range(src.size):
            w[src[k], dst[p, k]] = w[dst[p, k], src[k]] = aff[p, k]
    w = w ** beta
    t = w / w.sum(axis=0, keepdims=True)
    for _ in range(logt):
        t = t @ t
    return scores.astype(np.float64) @ t


@pytest.mark.parametrize('size, radius, logt', [((10, 12), 5, 8), ((10, 12), 4, 6), ((11, 9), 3, 2)])
def test_sparse_walk_equals_the_dense_reference(size, radius, logt):
    rng = np.random.default_rng(3)
    src, dst = pair_indices(radius, size)
    n = size[0] * size[1]
    aff = rng.uniform(0.2, 1.0, dst.shape).astype(np.float32)
    scores = rng.uniform(0, 1, (5, n)).astype(np.float32)
    out = affinity_random_walk(aff, src, dst, n, scores, 8, logt)
    assert out.shape == (5, n) and out.dtype == torch.float32
    ref = dense_walk(aff, src, dst, n, scores, 8, logt)
    assert np.abs(out.numpy() - ref).max() <= 1e-5 * np.abs(ref).max()


def test_walk_keeps_constant_maps_and_is_a_convex_combination():
    rng = np.random.default_rng(4)
    src, dst = pair_indices(5, (10, 12))
    aff = torch.tensor(rng.uniform(0.1, 1.0, dst.shape), dtype=torch.float32)
    constant = torch.full((3, 120), 0.37)
    torch.testing.assert_close(affinity_random_walk(aff, src, dst, 120, constant, 8, 8), constant)
    scores = torch.tensor(rng.uniform(0, 1, (3, 120)), dtype=torch.float32)
    out = affinity_random_walk(aff, src, dst, 120, scores, 8, 8)
    assert (out.min(dim=1).values >= scores.min(dim=1).values - 1e-6).all()
    assert (out.max(dim=1).values <= scores.max(dim=1).values + 1e-6).all()
    transposed = pairs_transition(aff, torch.from_numpy(src), torch.from_numpy(dst), 120, 8).to_dense()
    torch.testing.assert_close(transposed.sum(dim=1), torch.ones(120, dtype=torch.float64))


# ----------------------------------------------------------------------------- network

def test_net_keys_are_the_references_and_affinities_match_the_definition():
    torch.manual_seed(0)
    model = Net(width=TINY).eval()
    backbone = set(ResNet38(width=TINY).state_dict())
    assert set(model.state_dict()) == backbone | {'f8_3.weight', 'f8_4.weight', 'f8_5.weight', 'f9.weight'}
    assert model.f9.weight.shape == (448, 448, 1, 1) and model.f8_5.weight.shape[0] == 256
    backbone_params, head = model.trainable_parameters()
    assert len(head) == 4 and not any(p is q for p in backbone_params for q in head)
    assert not model.conv1a.weight.requires_grad and not model.b2_2.conv_branch2a.weight.requires_grad
    with torch.no_grad():
        x = torch.randn(2, 3, 80, 96)
        aff = model(x)
        emb = model.embed(x)
    src, dst = pair_indices(5, (10, 12))
    assert aff.shape == (2, 34, src.size) and emb.shape == (2, 448, 10, 12)
    torch.testing.assert_close(pair_affinity(emb, torch.from_numpy(src), torch.from_numpy(dst)), aff)
    flat = emb.reshape(2, 448, -1)
    for n, p, k in ((0, 0, 0), (1, 33, 5), (1, 17, 23)):
        expected = torch.exp(-(flat[n, :, dst[p, k]] - flat[n, :, src[k]]).abs().mean())
        torch.testing.assert_close(aff[n, p, k], expected)


def test_backbone_from_the_cam_network():
    torch.manual_seed(1)
    cam = ResNet38(width=TINY, frozen_bn=False)
    state = dict(cam.state_dict(), **{'fc8.weight': torch.zeros(20, cam.channels['conv6'], 1, 1)})
    model = build_net('none', TINY, cam_state=state)
    for key, value in cam.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)


# ----------------------------------------------------------------------------- labels for training

def test_confident_label_rule():
    la = np.zeros((3, 2, 3), np.float32)
    ha = np.zeros((3, 2, 3), np.float32)
    la[:, 0] = [[0.2, 0.6, 0.1], [0.7, 0.3, 0.1], [0.1, 0.1, 0.8]]   # pixel-wise: fg1, bg, fg2
    ha[:, 0] = [[0.1, 0.5, 0.1], [0.8, 0.6, 0.1], [0.1, 0.3, 0.8]]   # fg1, fg1, fg2
    ha[0, 0, 0] = 0.9                                                   # (0, 0): ha says bg over la's fg
    la[:, 1] = [[0.9, 0.9, 0.0], [0.1, 0.1, 0.0], [0.0, 0.0, 0.0]]   # (1, 2): padding, no score
    ha[:, 1] = [[0.2, 0.9, 0.0], [0.8, 0.1, 0.0], [0.0, 0.0, 0.0]]
    label = confident_label(la, ha)
    np.testing.assert_array_equal(label, [[0, 255, 2], [255, 0, 255]])
    maps = np.arange(2 * 16 * 24, dtype=np.float32).reshape(2, 16, 24)
    pooled = block_mean(maps)
    assert pooled.shape == (2, 2, 3) and pooled[1, 1, 2] == maps[1, 8:, 16:].mean()


def write_crf_maps(root: Path, crf_dir: Path, ids, blur: bool = True) -> None:
    """la/ha maps from the ground truth: la = ha = one-hot of the mask over [background, image classes]."""
    crf_dir.mkdir(parents=True, exist_ok=True)
    for image_id in ids:
        mask = read_label_png(root / 'SegmentationClass' / f'{image_id}.png')
        keys = np.array(sorted(set(np.unique(mask)) - {0, 255}), np.int64)
        maps = np.stack([(mask == 0) | (mask == 255)] + [mask == k for k in keys]).astype(np.float16)
        np.savez_compressed(crf_dir / f'{image_id}.npz', keys=keys - 1, la=maps, ha=maps)


def test_crf_affinity_dataset(synthetic_voc, tmp_path):
    from voc12.dataloader import resolve_list
    ids = resolve_list('train', 'train', synthetic_voc)[:3]
    write_crf_maps(synthetic_voc, tmp_path, ids)
    dataset = CrfAffinityDataset(ids, synthetic_voc, tmp_path, crop_size=80, seed=1)
    sample = dataset[0]
    assert sample['img'].shape == (3, 80, 80)
    n_src = pair_indices(5, 10)[0].size
    for key in ('aff_bg_pos_label', 'aff_fg_pos_label', 'aff_neg_label'):
        assert sample[key].shape == (34, n_src)
    total = sample['aff_bg_pos_label'] + sample['aff_fg_pos_label'] + sample['aff_neg_label']
    assert total.max() <= 1
    # 64 px images in an 80 px crop: padded blocks are ignored, so some pairs carry no label
    assert total.sum() < total.numel()
    again = dataset[0]
    torch.testing.assert_close(sample['img'], again['img'])
    dataset.set_epoch(1)
    assert not torch.equal(dataset[0]['img'], sample['img'])


# ----------------------------------------------------------------------------- walk step core

def test_walk_radius_and_pooled_scores():
    assert walk_radius(63, 47) == 5 and walk_radius(10, 12) == 4 and walk_radius(8, 8) == 3
    cams = np.zeros((2, 12, 20), np.float32)
    cams[0, :, :8] = 1
    cams[1, :, 8:] = 0.5
    scores = pooled_scores(cams, 2, (16, 24))
    assert scores.shape == (3, 2, 3)
    assert scores[0, 0, 0] == 0                               # background (1 - 1)^2 where class 0 is sure
    assert scores[0, 0, 2] == pytest.approx(0.25 * 0.5)       # half the block is padding (0 in every channel)
    assert scores[1, 1, 0] == pytest.approx(0.5)             # rows 12-15 are padding
    assert scores[2, 1, 2] == pytest.approx(0.5 * 0.25)


def test_label_from_walk_maps_keys():
    walked = torch.zeros(3, 2, 2)
    walked[1, 0] = 1
    walked[2, 1, 1] = 1
    label = label_from_walk(walked, np.array([4, 11]), (13, 11))
    assert label.shape == (13, 11) and set(np.unique(label)) <= {0, 5, 12}
    assert label[0, 0] == 5 and label[12, 10] == 12


def test_sem_seg_from_affinity_on_a_tiny_net():
    torch.manual_seed(2)
    model = Net(width=TINY).eval()
    img = torch.randn(3, 75, 90)
    cams = np.zeros((2, 75, 90), np.float32)
    cams[0, :40, :40] = 1
    cams[1, 40:, 50:] = 0.8
    label, walked = sem_seg_from_affinity(model, img, cams, np.array([3, 8]), rw_alpha=16, beta=8, exp_times=3)
    assert label.shape == (75, 90) and label.dtype == np.uint8
    assert set(np.unique(label)) <= {0, 4, 9}
    assert walked.shape == (3, 10, 12)
    np.testing.assert_array_equal(label, label_from_walk(walked, [3, 8], (75, 90)))
    scores = pooled_scores(cams, 16, (80, 96))
    assert (walked.amin(dim=(1, 2)) >= scores.amin(dim=(1, 2)) - 1e-6).all()      # convex combinations
    assert (walked.amax(dim=(1, 2)) <= scores.amax(dim=(1, 2)) + 1e-6).all()
    label0, walked0 = sem_seg_from_affinity(model, img, cams, np.array([3, 8]), 16, 8, 0)
    assert label0[10, 10] == 4 and label0[70, 85] == 9                                # one step keeps the cores
    label_crf, walked_crf = sem_seg_from_affinity(model, img, cams, np.array([3, 8]), 16, 8, 3, crf=True)
    assert label_crf.shape == (75, 90) and set(np.unique(label_crf)) <= {0, 4, 9}
    torch.testing.assert_close(walked_crf, walked)                                  # the CRF follows the walk


def reference_background(present: dict[int, np.ndarray], alpha: float, n_classes: int = 20) -> np.ndarray:
    """The reference's background row: every class's map, absent ones 0, then (1 - max over classes)^alpha."""
    full = np.zeros((n_classes,) + next(iter(present.values())).shape, np.float32)
    for c, cam in present.items():
        full[c] = cam
    return (1 - full.max(axis=0)) ** alpha


def test_walk_background_counts_absent_classes_as_zero_as_the_reference():
    # SEAM's normalised CAMs are negative where a class was cut, so the max over the present classes
    # alone is negative there; the reference's max also sees the absent classes' zeros and stays >= 0.
    rng = np.random.default_rng(0)
    cams = rng.uniform(-0.3, 1.0, (2, 16, 16)).astype(np.float32)
    cams[:, :8, :8] = -0.2                                          # every present class below 0
    ours = pooled_scores(cams, 6, (16, 16))[0].numpy()
    ref = reference_background({3: cams[0], 11: cams[1]}, 6)
    ref_pooled = ref.reshape(2, 8, 2, 8).mean(axis=(1, 3))
    np.testing.assert_allclose(ours, ref_pooled, rtol=1e-6)
    assert ours[0, 0] == pytest.approx(1.0)                         # (1 - 0)^6, not (1 + 0.2)^6 = 2.99
    every = rng.uniform(-0.3, 1.0, (20, 8, 8)).astype(np.float32)   # all classes present: no zero to add
    every[:, :4] = -0.1
    np.testing.assert_allclose(pooled_scores(every, 2, (8, 8), num_classes=20)[0, 0, 0].numpy(),
                               ((1 + 0.1) ** 2 * 32 + ((1 - every[:, 4:].max(axis=0)) ** 2).sum()) / 64, rtol=1e-5)
    assert pooled_scores(np.zeros((0, 8, 8), np.float32), 4, (8, 8)).numpy().tolist() == [[[1.0]]]


def test_denormalized_uint8_undoes_the_normalisation_and_pads_with_the_mean():
    from misc.imutils import hwc_to_chw, normalize
    img = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    x = torch.from_numpy(hwc_to_chw(normalize(img)))
    back = denormalized_uint8(torch.nn.functional.pad(x, (0, 1, 0, 3)))
    assert back.shape == (8, 8, 3) and back.dtype == np.uint8
    assert np.abs(back[:5, :7].astype(int) - img).max() <= 1          # truncation, as the reference's astype
    assert back[7, 7].tolist() == [123, 116, 103]                     # 0 in normalised space: the mean colour


def test_walk_crf_is_one_soft_crf_iteration_over_all_classes():
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax
    rng = np.random.default_rng(3)
    walked = torch.from_numpy(rng.uniform(0, 1, (3, 3, 4)).astype(np.float32))
    image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    keys = np.array([2, 14])
    ours = label_from_walk(walked, keys, (21, 30), crf_image=image)
    up = torch.nn.functional.interpolate(walked[None], size=(24, 32), mode='bilinear', align_corners=False)[0]
    full = np.zeros((21, 24, 32), np.float32)
    full[[0, 3, 15]] = up.numpy()
    crf = dcrf.DenseCRF2D(32, 24, 21)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(full)))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=80, srgb=13, rgbim=np.ascontiguousarray(image), compat=10)
    ref = np.argmax(np.asarray(crf.inference(1)).reshape(21, 24, 32), axis=0)[:21, :30]
    np.testing.assert_array_equal(ours, ref)
    plain = label_from_walk(walked, keys, (21, 30))
    assert set(np.unique(ours)) <= {0, 3, 15} and (ours != plain).any()   # the CRF moved some pixels


def test_rw_crf_is_a_real_boolean_flag_and_part_of_the_walk_fingerprint():
    from step import make_sem_seg_aff
    from step.registry import parse_config
    assert parse_config(['--method', 'seam']).rw_crf is False
    cfg = parse_config(['--method', 'seam', '--rw_crf'])
    assert cfg.rw_crf is True
    assert parse_config(['--method', 'seam', '--rw_crf', 'false']).rw_crf is False
    assert 'rw_crf' in make_sem_seg_aff.settings(cfg)


# ----------------------------------------------------------------------------- torchrun

def test_two_gloo_processes_train_the_same_affinitynet(synthetic_voc, tmp_path):
    import os
    import subprocess
    import sys
    from step.registry import parse_config
    from step import common
    from step.make_crf_labels import crf_dir

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    outs = {}
    for name, nproc in (('one', 0), ('two', 2)):
        work = tmp_path / name
        flags = ['--method', 'affinitynet', '--profile', 'smoke', '--voc12_root', str(synthetic_voc),
                 '--work_dir', str(work), '--seed', '3', '--aff_num_epoches', '2', '--num_workers', '0']
        cfg = parse_config(flags)
        write_crf_maps(synthetic_voc, crf_dir(cfg), common.train_ids(cfg))
        torch.manual_seed(5)
        cfg.weights_dir.mkdir(parents=True)
        torch.save({'model': ResNet38(width=TINY, frozen_bn=False).state_dict()}, cfg.weights_dir / 'cam.pt')
        launcher = [sys.executable] + (['-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}']
                                       if nproc else [])
        outs[name] = tmp_path / f'{name}.pt'
        result = subprocess.run(launcher + [str(root / 'tests' / 'aff_train_worker.py'), str(outs[name]), *flags],
                                cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    a, b = (torch.load(outs[n], map_location='cpu', weights_only=True) for n in ('one', 'two'))
    assert a.keys() == b.keys()
    moved = 0
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    start = build_net('none', TINY, cam_state=torch.load(tmp_path / 'one' / 'weights' / 'cam.pt',
                                                         weights_only=False)['model'])
    for key, value in start.state_dict().items():
        if key.startswith('b7.') and value.is_floating_point() and not torch.equal(value, a[key]):
            moved += 1
    assert moved > 0            # the backbone learned (so the comparison covers its gradients too)


# ----------------------------------------------------------------------------- the three steps end to end

def write_fake_cams(cfg, ids) -> None:
    """CAM files as make_cam writes them, from the ground truth (blurred masks), and a CAM network's weights."""
    import torch.nn.functional as F
    from misc.imutils import save_npz
    for image_id in ids:
        mask = read_label_png(cfg.dataset_root / 'SegmentationClass' / f'{image_id}.png')
        keys = np.array(sorted(set(np.unique(mask)) - {0, 255}), np.int64)
        onehot = torch.from_numpy(np.stack([mask == k for k in keys]).astype(np.float32))[None]
        cams = F.avg_pool2d(onehot, 9, 1, 4, count_include_pad=False)[0].numpy()
        cams /= cams.max(axis=(1, 2), keepdims=True) + 1e-5
        save_npz(cfg.cam_dir / f'{image_id}.npz', keys=keys - 1, high_res=cams, cam=cams[:, ::8, ::8])
    cfg.weights_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(5)
    torch.save({'model': ResNet38(width=cfg.backbone_width, frozen_bn=False).state_dict()},
               cfg.weights_dir / 'cam.pt')


def test_affinitynet_steps_run_and_resume(synthetic_voc, tmp_path):
    import json
    import run_sample
    from step.registry import parse_config
    from step import common

    flags = ['--method', 'affinitynet', '--profile', 'smoke', '--voc12_root', str(synthetic_voc),
             '--work_dir', str(tmp_path), '--seed', '1', '--num_workers', '0',
             '--steps', 'eval_cam,cam_to_ir_label,train_irn,make_sem_seg,eval_sem_seg', '--sweep', '0.3', '0.5', '0.9',
             '--exp_times', '0']
    cfg = parse_config(flags)
    ids = sorted(set(common.cam_ids(cfg)) | set(common.infer_ids(cfg)))
    write_fake_cams(cfg, ids)
    assert run_sample.main(flags) == 0
    assert len(list((tmp_path / 'crf').glob('*.npz'))) == len(common.train_ids(cfg))
    assert len(list((tmp_path / 'relation_label').glob('*.png'))) == len(common.train_ids(cfg))
    assert (tmp_path / 'weights' / 'aff.pt').is_file()
    masks = sorted((tmp_path / 'sem_seg').glob('*.png'))
    assert [p.stem for p in masks] == sorted(common.infer_ids(cfg))
    with np.load(tmp_path / 'rw_aff' / f'{masks[0].stem}.npz') as rw:
        assert rw['rw'].shape[0] == rw['keys'].size + 1
    result = json.loads((tmp_path / 'metrics' / 'eval_sem_seg.json').read_text())
    cams = json.loads((tmp_path / 'metrics' / 'eval_cam.json').read_text())
    # CAMs blurred from the ground truth score about what the blur leaves (0.96 here); one walk step of an
    # AffinityNet trained for one epoch, at stride 8 on 64-pixel images, keeps more than half of it
    assert cams['miou'] == pytest.approx(0.959, abs=0.02)
    assert 0.45 < result['miou'] < cams['miou']
    # the sweep thresholds the walked scores: 0.5 is the masks' argmax, the rows differ
    rows = {row['threshold']: row['miou'] for row in result['sweep']}
    assert rows[0.5] == pytest.approx(result['miou'], abs=1e-6)
    assert len(set(rows.values())) == 3 and rows[0.9] < rows[0.5]
    stamp = {p: p.stat().st_mtime_ns for p in masks + [tmp_path / 'weights' / 'aff.pt']}
    assert run_sample.main(flags) == 0                   # finished outputs are kept, not redone
    assert stamp == {p: p.stat().st_mtime_ns for p in stamp}


def test_interrupted_affinitynet_training_resumes_to_the_same_weights(synthetic_voc, tmp_path, monkeypatch):
    import dataclasses
    from misc import torchutils
    from step.registry import parse_config
    from step import common, train_aff
    from step.make_crf_labels import crf_dir

    cfg = parse_config(['--method', 'affinitynet', '--profile', 'smoke', '--voc12_root', str(synthetic_voc),
                        '--work_dir', str(tmp_path), '--seed', '2', '--aff_num_epoches', '2', '--num_workers', '0'])
    write_fake_cams(cfg, common.train_ids(cfg))
    write_crf_maps(synthetic_voc, crf_dir(cfg), common.train_ids(cfg))
    dataset = CrfAffinityDataset(common.train_ids(cfg), synthetic_voc, crf_dir(cfg), cfg.aff_crop_size, seed=cfg.seed)
    device = torch.device('cpu')

    torchutils.seed_everything(cfg.seed)
    straight = train_aff.build_model(cfg)
    train_aff.fit(straight, dataset, cfg, device, tmp_path / 'straight.pt')

    torchutils.seed_everything(cfg.seed)
    killed = train_aff.build_model(cfg)
    real_epoch, calls = train_aff.train_one_epoch, []

    def stop_at_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)
    monkeypatch.setattr(train_aff, 'train_one_epoch', stop_at_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_aff.fit(killed, dataset, cfg, device, tmp_path / 'killed.pt')
    monkeypatch.setattr(train_aff, 'train_one_epoch', real_epoch)

    torch.manual_seed(99)                              # whatever the state: the checkpoint restores it
    resumed = train_aff.build_model(cfg)
    history = train_aff.fit(resumed, dataset, dataclasses.replace(cfg, resume=True), device, tmp_path / 'killed.pt')
    assert [e['epoch'] for e in history['epochs']] == [2]
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=1e-6, msg=key)
