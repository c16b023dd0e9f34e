"""AffinityNet (PSA, Ahn and Kwak, CVPR 2018): ResNet-38 CAMs, la/ha CRF labels, AffinityNet, its random walk.
Profiles: the paper's settings (psa train_cls/train_aff/infer_aff), and ResNet-38 at reduced width from
scratch for the CPU demo and the tests; how the demo values were chosen: docs/demo.md."""
from __future__ import annotations

from misc.config import Config

HELP = 'affinitynet (PSA, ResNet-38)'

# The AffinityNet steps after the CAMs (SEAM reuses them).
AFFINITY_STEPS = {
    'make_relation_labels': 'step.make_crf_labels',
    'train_relation': 'step.train_aff',
    'make_sem_seg': 'step.make_sem_seg_aff',
}

STEPS = {'make_cam': 'step.make_cam_psa', **AFFINITY_STEPS}

PROFILES = {
    'paper': dict(backbone='resnet38', cam_network='net.resnet38_cls', cam_crop_size=448,
                  cam_resize_long=(256, 512), cam_batch_size=16, cam_num_epoches=15, cam_learning_rate=0.1,
                  cam_weight_decay=5e-4, cam_scales=(1.0, 0.5, 1.5, 2.0), cam_eval_thres=0.2,
                  cam_color_jitter=(0.3, 0.3, 0.3, 0.1),
                  crf_la_alpha=4.0, crf_ha_alpha=32.0, aff_crop_size=448, aff_batch_size=8, aff_num_epoches=8,
                  aff_learning_rate=0.1, aff_weight_decay=5e-4, rw_alpha=16.0, beta=8, exp_times=8),
    # 1/8 width from scratch; no jitter (a hue shift relabels the synthetic classes), no dropout, lr 0.3,
    # a short walk with a low background power: measured choices, see docs/demo.md
    'demo': dict(backbone='resnet38', backbone_width=0.125, pretrained='none', synthetic_n_train=400,
                 cam_crop_size=96, cam_resize_long=(72, 128), cam_batch_size=16, cam_num_epoches=8,
                 cam_learning_rate=0.3, cam_color_jitter=(0.0, 0.0, 0.0, 0.0), cam_dropout=False,
                 cam_weight_decay=1e-4, cam_scales=(1.0, 0.5, 1.5), cam_eval_thres=0.3,
                 aff_crop_size=96, aff_batch_size=8, aff_num_epoches=2,
                 rw_alpha=4.0, exp_times=2),
    'smoke': dict(backbone='resnet38', backbone_width=0.0625, pretrained='none', cam_crop_size=64,
                  cam_resize_long=(48, 80), cam_batch_size=8, cam_num_epoches=1, cam_scales=(1.0, 0.5),
                  cam_eval_thres=0.5, aff_crop_size=72, aff_batch_size=8, aff_num_epoches=1),
}


def validate_affinity_steps(cfg: Config) -> list[str]:
    """Checks of the ResNet-38 backbone and the AffinityNet steps (SEAM's too)."""
    problems = []
    if cfg.backbone != 'resnet38':
        problems.append(f'--backbone {cfg.backbone} does not fit --method {cfg.method}: affinitynet and seam use '
                        'resnet38, irn resnet50 or resnet18')
    if cfg.aff_crop_size % 8 or cfg.aff_crop_size < 72:
        problems.append(f'--aff_crop_size {cfg.aff_crop_size}: must be a multiple of 8 and at least 72, since '
                        'AffinityNet learns from pixel pairs up to 4 apart at stride 8 (9 feature columns)')
    if cfg.crf_la_alpha > cfg.crf_ha_alpha:
        problems.append(f'--crf_la_alpha {cfg.crf_la_alpha} is above --crf_ha_alpha {cfg.crf_ha_alpha}; the '
                        'low-alpha (confident foreground) labels must use the lower power')
    return problems


def validate(cfg: Config) -> list[str]:
    return validate_affinity_steps(cfg)
