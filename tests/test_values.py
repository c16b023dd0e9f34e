"""Hand-computed values of core pieces whose other tests only check shapes or run them: IRN's loss terms
and boundary map, IRNet's flip fusion of CAMs, IRN's mean shift statistic, and the CAM validation loss."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from misc import imutils
from misc.config import Config
from net.resnet50_irn import boundary_map, irn_loss
from step import common, train_cam, train_irn
from step.make_cam import flip_summed_cams

CPU = torch.device('cpu')


def test_irn_loss_weighs_its_terms_as_the_reference():
    """(pos_aff + neg_aff)/2 + (dp_fg + dp_bg)/2, pos_aff = bg/2 + fg/2, each averaged over its pairs."""
    bg = torch.tensor([[1., 0, 0, 0]])
    fg = torch.tensor([[0., 1, 1, 0]])
    neg = torch.tensor([[0., 0, 0, 1]])
    pos_aff_loss = torch.tensor([[1., 2, 4, 8]])
    neg_aff_loss = torch.tensor([[32., 64, 128, 16]])
    dp_fg_loss = torch.tensor([[[1., 2, 3, 4], [5, 6, 7, 8]]])        # (N, 2, P): x and y of each pair
    dp_bg_loss = torch.tensor([[[10., 0, 0, 0], [20, 0, 0, 0]]])
    total, parts = irn_loss((pos_aff_loss, neg_aff_loss, dp_fg_loss, dp_bg_loss), bg, fg, neg)
    pos_aff = 1 / 1 / 2 + (2 + 4) / 2 / 2          # 0.5 + 1.5
    neg_aff = 16 / 1
    dp_fg = (2 + 3 + 6 + 7) / (2 * 2)
    dp_bg = (10 + 20) / (2 * 1)
    expected = (pos_aff + neg_aff) / 2 + (dp_fg + dp_bg) / 2
    assert parts == pytest.approx({'pos_aff': pos_aff, 'neg_aff': neg_aff, 'dp_fg': dp_fg, 'dp_bg': dp_bg}, rel=1e-4)
    assert float(total) == pytest.approx(expected, rel=1e-4) and expected == 18.75
    # under DDP each rank divides by the global pair counts and scales by the number of ranks
    doubled, _ = irn_loss((pos_aff_loss, neg_aff_loss, dp_fg_loss, dp_bg_loss), bg, fg, neg,
                          pair_counts=torch.tensor([2., 4., 2.]), world=2)
    halved = (1 / 2 / 2 + 6 / 4 / 2 + 16 / 2) / 2 + (18 / 8 + 30 / 4) / 2
    assert float(doubled) == pytest.approx(2 * halved, rel=1e-4)


class EdgeOfChannel0(nn.Module):
    """A stand-in IRN: its boundary logits are channel 0 of the input at stride 4; it records its input size."""

    def forward(self, x):
        self.seen = tuple(x.shape)
        return x[:, :1, ::4, ::4], torch.zeros(x.shape[0], 2, *x[0, 0, ::4, ::4].shape)


@pytest.mark.parametrize('size, crop, padded', [((10, 13), 32, (32, 32)), ((40, 37), 32, (48, 48))])
def test_irn_boundary_map_pads_crops_and_unflips(size, crop, padded):
    img = torch.rand(3, *size)
    net = EdgeOfChannel0()
    edge = boundary_map(net, torch.stack([img, img.flip(-1)]), crop_size=crop)
    assert net.seen == (2, 3) + padded             # zero-padded to the crop, or to a multiple of 16
    h, w = (size[0] - 1) // 4 + 1, (size[1] - 1) // 4 + 1
    assert edge.shape == (h, w)
    # the flip's map, cropped to the image's own columns and flipped back, is the image's: the mean is it
    torch.testing.assert_close(edge, torch.sigmoid(img[0, ::4, ::4]))
    # an image whose flip differs: the logits of both are averaged before the sigmoid
    other = torch.rand(3, *size)
    both = boundary_map(net, torch.stack([img, other]), crop_size=crop)
    expected = torch.sigmoid(img[0, ::4, ::4] / 2 + other[0, ::4, ::4].flip(-1) / 2)
    torch.testing.assert_close(both, expected)


class Identity(nn.Module):
    def features(self, x):
        return x


def test_flip_summed_cams_adds_the_flipped_back_map():
    img = torch.rand(3, 5, 7)
    classifier = torch.zeros(20, 3, 1, 1)
    classifier[4, 0] = 1.0                  # class 4: channel 0
    classifier[9, 1], classifier[9, 2] = 2.0, -1.0
    pyramid = [torch.stack([img, img.flip(-1)]), torch.stack([img[:, ::2, ::2], img[:, ::2, ::2].flip(-1)])]
    out = flip_summed_cams(Identity(), classifier, pyramid, np.array([4, 9]), CPU)
    assert [tuple(o.shape) for o in out] == [(2, 5, 7), (2, 3, 4)]
    torch.testing.assert_close(out[0][0], 2 * img[0])                          # ReLU of a positive map, twice
    torch.testing.assert_close(out[0][1], 2 * torch.relu(2 * img[1] - img[2]))
    torch.testing.assert_close(out[1][0], 2 * img[0, ::2, ::2])
    # a pair that is not image + flip: the second map is flipped back, then added
    other = torch.rand(3, 5, 7)
    mixed = flip_summed_cams(Identity(), classifier, [torch.stack([img, other])], np.array([4]), CPU)
    torch.testing.assert_close(mixed[0][0], img[0] + other[0].flip(-1))


class ConstantShift(nn.Module):
    """A stand-in IRN whose displacement x is each image's mean value and y is 1."""

    def __init__(self):
        super().__init__()
        self.mean_shift = nn.Module()
        self.mean_shift.register_buffer('running_mean', torch.full((2,), 7.0))

    def forward(self, x):
        per_image = x.mean(dim=(1, 2, 3))
        dp = torch.stack([per_image[:, None, None].expand(-1, 4, 4), torch.ones(len(x), 4, 4)], dim=1)
        return None, dp


def test_measure_mean_shift_is_the_mean_of_batch_means(synthetic_voc, tmp_path):
    cfg = Config(work_dir=tmp_path, voc12_root=synthetic_voc, irn_batch_size=6, irn_crop_size=32, num_workers=0)
    ids = common.infer_ids(cfg)
    assert len(ids) % 6 != 0                   # a short last batch: batch means differ from image means
    values = [float(imutils.top_left_crop(imutils.normalize(imutils.read_rgb(synthetic_voc / 'JPEGImages' /
                                                                            f'{i}.jpg')), 32, 0.0).mean())
              for i in ids]
    batches = [values[k:k + 6] for k in range(0, len(values), 6)]
    expected_x = np.mean([np.mean(b) for b in batches])
    assert abs(expected_x - np.mean(values)) > 1e-6
    model = ConstantShift()
    shift = train_irn.measure_mean_shift(model, cfg, CPU)
    assert shift.tolist() == pytest.approx([expected_x, 1.0], rel=1e-5)
    assert model.mean_shift.running_mean.tolist() == [0.0, 0.0]      # zeroed before the pass (eval: no shift)


class FixedLogits(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, img):
        return self.logits.expand(len(img), -1)


def test_cam_validation_loss_is_the_mean_over_images(tmp_path):
    labels = torch.tensor([[1., 0.], [1., 0.], [0., 1.]])
    loader = [{'img': torch.zeros(2, 3, 4, 4), 'label': labels[:2]}, {'img': torch.zeros(1, 3, 4, 4), 'label': labels[2:]}]
    model = FixedLogits([0.0, 2.0]).train()

    def bce(x, y):
        return -(y * math.log(1 / (1 + math.exp(-x))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-x))))
    per_image = [np.mean([bce(0.0, y0), bce(2.0, y1)]) for y0, y1 in labels.tolist()]
    loss = train_cam.validate(model, loader, CPU, Config())
    assert loss == pytest.approx(np.mean(per_image), rel=1e-6)
    assert per_image[0] == pytest.approx((math.log(2) + math.log(1 + math.exp(2))) / 2)
    assert model.training                      # back in training mode


def test_global_random_state_kept_restores_every_generator():
    # The segmentation steps run inside it, so that the CDA pass's CAM network (initialised from the global
    # torch state) draws what it drew before those steps joined the pass.
    import random
    from misc import torchutils
    torch.manual_seed(3); np.random.seed(3); random.seed(3)
    with torchutils.global_random_state_kept():
        torch.manual_seed(0)
        torch.rand(5), np.random.rand(3), random.random()
    after = (torch.rand(1).item(), float(np.random.rand()), random.random())
    torch.manual_seed(3); np.random.seed(3); random.seed(3)
    assert after == (torch.rand(1).item(), float(np.random.rand()), random.random())
