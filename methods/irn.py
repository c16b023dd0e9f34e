"""IRNet (Ahn et al., CVPR 2019): ResNet-50 CAMs, IR labels by dense CRF, IRN's boundaries and displacements,
random walk to semantic masks, displacement clusters to instance masks. Its paper settings are Config's
defaults; its demo/smoke sizes are misc.config.PROFILES'."""
from __future__ import annotations

from misc.config import Config

HELP = 'irn (default, ResNet-50)'

STEPS = {
    'make_cam': 'step.make_cam',
    'make_relation_labels': 'step.cam_to_ir_label',
    'train_relation': 'step.train_irn',
    'make_sem_seg': 'step.make_sem_seg_labels',
    'make_ins_seg': 'step.make_ins_seg_labels',
    'eval_ins_seg': 'step.eval_ins_seg',
}

# The VOC demo over misc.config.PROFILES['demo']: 240 train and 50 context-shift images, CAM batches of 12 (160
# steps of 8 epochs), IRN crops of 96 for 3 epochs, so that the whole demo, segmentation steps included, fits
# 15 minutes on a 2-core CPU (docs/demo.md, "The profile"). The COCO demo keeps the earlier values
# (misc.config.DATASET_PROFILES).
PROFILES: dict[str, dict] = {
    'demo': dict(synthetic_n_train=240, synthetic_n_shift=50, cam_batch_size=12, irn_crop_size=96,
                 irn_num_epoches=3),
}


def validate(cfg: Config) -> list[str]:
    problems = []
    if cfg.backbone == 'resnet38':
        problems.append(f'--backbone {cfg.backbone} does not fit --method {cfg.method}: affinitynet and seam use '
                        'resnet38, irn resnet50 or resnet18')
    if cfg.conf_bg_thres > cfg.conf_fg_thres:
        problems.append(f'--conf_bg_thres {cfg.conf_bg_thres} is above --conf_fg_thres {cfg.conf_fg_thres}; '
                        'the background threshold must be the lower one')
    if cfg.irn_crop_size < 80:
        problems.append(f'--irn_crop_size {cfg.irn_crop_size} is too small: IRN learns from pixel pairs up to '
                        '10 apart at stride 4, which needs a crop of at least 80')
    if cfg.irn_backbone_lr_mult < 0 or (cfg.irn_backbone_lr_mult > 0 and cfg.pretrained != 'none'):
        problems.append(f'--irn_backbone_lr_mult {cfg.irn_backbone_lr_mult}: must be 0 or more, and above 0 only '
                        'with --pretrained none (with ImageNet weights the IRN backbone stays frozen, as the '
                        'reference)')
    if cfg.irn_rescale[0] > cfg.irn_rescale[1]:
        problems.append('--irn_rescale: the first value (min) is above the second (max)')
    return problems
