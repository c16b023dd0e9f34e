"""SEAM (Wang et al., CVPR 2020): its two-branch ResNet-38 CAM network, then the AffinityNet steps with SEAM's
settings. Profiles: the paper's (YudeWang/SEAM train_SEAM.py, infer_SEAM.py, README), and the CPU demo's
reduced-width recipe; how the demo values were chosen: docs/demo.md."""
from __future__ import annotations

from methods.affinitynet import AFFINITY_STEPS, validate_affinity_steps
from misc.config import Config

HELP = 'seam (ResNet-38)'

STEPS = {'train_cam': 'step.train_seam', 'make_cam': 'step.make_cam_seam', **AFFINITY_STEPS}

PROFILES = {
    'paper': dict(backbone='resnet38', cam_network='net.resnet38_seam', cam_crop_size=448,
                  cam_resize_long=(448, 768), cam_batch_size=8, cam_num_epoches=8, cam_learning_rate=0.01,
                  cam_weight_decay=5e-4, cam_scales=(0.5, 1.0, 1.5, 2.0), cam_eval_thres=0.26,
                  cam_color_jitter=(0.3, 0.3, 0.3, 0.1),
                  crf_la_alpha=4.0, crf_ha_alpha=24.0, aff_crop_size=448, aff_batch_size=8, aff_num_epoches=8,
                  aff_learning_rate=0.01, aff_weight_decay=5e-4, rw_alpha=6.0, beta=8, exp_times=6),
    # as the affinitynet demo (1/8 width, no jitter, no dropout, lr 0.3); fewer epochs since a step runs
    # two branches; the walk chosen as affinitynet's, and its AffinityNet's crop 96 x 2 epochs (128 x 4 before:
    # masks 27.4 against 27.1 on seed 0, 100 s less a pass, so the demo fits 15 minutes): see docs/demo.md
    'demo': dict(backbone='resnet38', backbone_width=0.125, pretrained='none', synthetic_n_train=400,
                 cam_crop_size=96, cam_resize_long=(96, 160), cam_batch_size=16, cam_num_epoches=6,
                 cam_learning_rate=0.3, cam_color_jitter=(0.0, 0.0, 0.0, 0.0), cam_dropout=False,
                 cam_weight_decay=1e-4, cam_scales=(0.5, 1.0, 1.5), cam_eval_thres=0.26,
                 aff_crop_size=96, aff_batch_size=16, aff_num_epoches=2,
                 rw_alpha=2.0, exp_times=2),
    'smoke': dict(backbone='resnet38', backbone_width=0.0625, pretrained='none', cam_crop_size=48,
                  cam_resize_long=(48, 80), cam_batch_size=4, cam_num_epoches=1, cam_scales=(1.0, 0.5),
                  aff_crop_size=72, aff_batch_size=8, aff_num_epoches=1),
}


def validate(cfg: Config) -> list[str]:
    problems = validate_affinity_steps(cfg)
    if int(cfg.cam_crop_size * cfg.seam_scale) < 8:
        problems.append(f'--seam_scale {cfg.seam_scale} with --cam_crop_size {cfg.cam_crop_size}: the second '
                        'branch\'s crop must keep at least 8 pixels (one feature at stride 8); raise either')
    if cfg.seam_ecr_ratio <= 0:
        problems.append('--seam_ecr_ratio must be above 0 (the share of entries ECR averages)')
    return problems
