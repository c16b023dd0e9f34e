"""Command-line flags -> one frozen `Config`, with the steps and methods a `Catalog` lists
(step.registry.parse_config hands in the registry's; misc/ imports no step, network or dataset module).

Defaults are the published (paper) settings of IRNet; each method's own are in its methods/ module;
`--profile demo|smoke` swaps in smaller ones, and any flag given explicitly wins over the profile.
Nothing here runs at import time.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

def str2bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in ('1', 'true', 't', 'yes', 'y', 'on'):
        return True
    if lowered in ('0', 'false', 'f', 'no', 'n', 'off'):
        return False
    raise argparse.ArgumentTypeError(f'expected true or false, got {value!r}')


def unit_float(value: str) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f'{value} is outside [0, 1]')
    return number


def positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f'{value} must be a positive integer')
    return number


def non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f'{value} must be zero or more')
    return number


def positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f'{value} must be positive')
    return number


@dataclass(frozen=True)
class Config:
    # ---- where things are
    work_dir: Path = Path('work_dir')
    dataset: str = 'voc12'                     # voc12 | coco14: the dataset description every step reads
    voc12_root: Optional[Path] = None          # None: generate the synthetic dataset under work_dir
    coco_root: Optional[Path] = None           # --dataset coco14: train2014/, val2014/, annotations/; None: synthetic
    sbd_root: Optional[Path] = None
    train_list: Optional[str] = None           # a list file, or a split name; None: train_aug
    val_list: Optional[str] = None             # None: Segmentation val
    infer_list: Optional[str] = None           # None: Segmentation train
    chainer_eval_set: str = 'train'            # the evaluation split (the reference's flag name)
    stage: str = ''                            # '' for the baseline pass, 'cda' for the CDA pass
    method: str = 'irn'                        # a methods/ module (step/registry.py): which steps fill the slots
    # ---- run control
    profile: str = 'paper'
    device: str = 'auto'
    seed: int = 0
    deterministic: bool = False
    num_workers: int = field(default_factory=lambda: max(1, (os.cpu_count() or 2) // 2))
    overwrite: bool = False
    resume: bool = False
    debug: bool = False
    progress: str = 'auto'                     # auto (bar on a terminal, log lines otherwise) | bar | log | off
    amp: bool = False
    channels_last: bool = False
    augment_on_device: bool = True             # CUDA: training samples resized and jittered on the GPU (same pixels)
    pretrained: str = 'imagenet'               # imagenet | none | PATH to a torchvision state dict
    backbone: str = 'resnet50'                 # resnet50 (the paper) | resnet18 (CPU demo) | resnet38 (PSA, SEAM)
    backbone_width: float = 1.0                # ResNet-38 channel factor; below 1 only from scratch (CPU demo)
    # ---- trained weights of a reference implementation: the slot's training is skipped, these are used
    cam_weights: Optional[Path] = None         # e.g. irn res50_cam.pth, psa res38_cls.pth (net/weights.py)
    relation_weights: Optional[Path] = None    # the relation network: irn res50_irn.pth, psa res38_aff.pth
    # ---- CAM
    cam_network: str = 'net.resnet50_cam'
    cam_crop_size: int = 512
    cam_resize_long: tuple[int, int] = (320, 640)
    cam_batch_size: int = 16
    cam_num_epoches: int = 5
    cam_val_interval: int = 1                  # the validation loss every N epochs and after the last (IRNet: 1)
    cam_learning_rate: float = 0.1
    cam_weight_decay: float = 1e-4
    cam_eval_thres: float = 0.15
    cam_scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    cam_color_jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)   # brightness, contrast,
                                                                                # saturation, hue (PSA, SEAM)
    cam_dropout: bool = True                   # ResNet-38 CAM nets: channel dropout in b6, b7, before fc8
    # ---- IR labels
    conf_fg_thres: float = 0.30
    conf_bg_thres: float = 0.05
    # ---- IRN
    irn_network: str = 'net.resnet50_irn'
    irn_crop_size: int = 512
    irn_rescale: tuple[float, float] = (0.5, 1.5)
    irn_batch_size: int = 32
    irn_num_epoches: int = 3
    irn_learning_rate: float = 0.1
    irn_weight_decay: float = 1e-4
    irn_backbone_lr_mult: float = 0.0          # 0: frozen backbone (the reference); above 0 (from scratch only):
                                               # the CAM backbone is fine-tuned at this multiple of the lr
    # ---- random walk
    beta: int = 10
    exp_times: int = 8
    sem_seg_bg_thres: float = 0.25
    sweep: tuple[float, ...] = ()
    # ---- instance pseudo masks
    ins_seg_bg_thres: float = 0.25
    ins_seg_coco: bool = False                 # also write the train list's masks as a COCO JSON
    # ---- AffinityNet steps (method affinitynet; SEAM reuses them): la/ha CRF labels, AffinityNet, its walk
    crf_la_alpha: float = 4.0                  # low alpha: background (1 - max)^alpha large, confident fg
    crf_ha_alpha: float = 32.0                 # high alpha: background small, confident bg (SEAM 24)
    aff_crop_size: int = 448
    aff_batch_size: int = 8
    aff_num_epoches: int = 8
    aff_learning_rate: float = 0.1            # SEAM 0.01; the head learns at 10x
    aff_weight_decay: float = 5e-4
    rw_alpha: float = 16.0                    # background (1 - max)^alpha of the walked scores (SEAM 6);
                                              # the walk's beta and 2^exp_times steps are beta, exp_times
    rw_crf: bool = False                      # SEAM's infer_aff.py --crf: one CRF iteration after the walk
    # ---- SEAM (--method seam)
    seam_scale: float = 0.3                   # the second branch's downscale (the equivariance transform)
    seam_ecr_ratio: float = 0.2               # share of the hardest entries the ECR loss averages
    seam_min_pool: bool = True                # the reference code's adaptive min-pooling loss (not in the paper)
    cda_seam_equivariance: bool = True        # CDA pass: the pasted images also go through the downscaled branch
                                              # and every SEAM loss; false: the full-size branch, classification only
    # ---- CDA
    cda_bank_source: Optional[Path] = None
    cda_min_fg_ratio: float = 0.1
    cda_max_fg_ratio: float = 0.7
    cda_min_visible: float = 0.0
    cda_schedule: str = 'quirk'                # quirk: the reference's half-length poly decay; full
    cda_variant: str = 'rotate'                # rotate | scale | blur (the reference's three pastes)
    cda_paste_context: str = 'any'             # any (CDA) | usual | foreign: synthetic-data control experiment
    # ---- segmentation network (train_seg, make_seg, eval_seg): deeplab-pytorch's VOC recipe by default
    seg_network: str = 'deeplabv2'             # deeplabv2 (ResNet-101, the papers') | deeplabv2_resnet18 (CPU demo,
                                               # from scratch) | deeplabv3_resnet50 | deeplabv3_resnet101 (torchvision)
    seg_pretrained: str = 'imagenet'           # deeplabv2: PATH of deeplab-pytorch's init file (or none);
                                               # deeplabv3_*: imagenet (torchvision weights) | none | PATH
    seg_weights: Optional[Path] = None         # a trained network (deeplab-pytorch MSC checkpoint, or seg.pt): no training
    seg_iterations: int = 20000
    seg_batch_size: int = 10                   # images per optimizer step
    seg_accumulate: int = 1                    # chunks the batch is split into (the reference: 5 x 2)
    seg_learning_rate: float = 2.5e-4          # backbone convs; ASPP weights 10x, ASPP biases 20x (no decay)
    seg_momentum: float = 0.9
    seg_weight_decay: float = 5e-4
    seg_lr_step: int = 10                      # the poly 0.9 lr is updated every this many iterations
    seg_crop_size: int = 321
    seg_scales: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5)   # training rescale factors (one drawn per image)
    seg_msc_scales: tuple[float, ...] = (0.5, 0.75)               # DeepLab-v2's extra input scales (besides 1)
    seg_width: int = 64                        # stem channels of deeplabv2_resnet18 (the demo narrows it)
    seg_aspp_rates: tuple[int, ...] = (6, 12, 18, 24)             # DeepLab-v2's ASPP atrous rates
    seg_checkpoint_every: int = 1000           # iterations between train_seg checkpoints (--resume)
    seg_crf: bool = True                       # make_seg also writes the dense-CRF predictions (eval_seg scores both)
    seg_test_list: Optional[str] = None        # a list (e.g. test) predicted into the evaluation server's layout
    # ---- synthetic dataset (used when voc12_root, or coco_root with --dataset coco14, is None)
    synthetic_n_train: int = 400
    synthetic_n_val: int = 100
    synthetic_n_shift: int = 0                 # context-shift split: every object outside its usual scene
    synthetic_size: int = 128
    synthetic_n_classes: int = 0               # synthetic COCO: images drawn from this many of the 80 classes (0: all)
    context_bias: float = 0.85
    # ---- which steps run (names of step/registry.py; empty: none)
    steps: tuple[str, ...] = ()

    @property
    def out_dir(self) -> Path:
        """Root of this pass's outputs: work_dir for the baseline, work_dir/cda for the CDA pass."""
        return self.work_dir / self.stage if self.stage else self.work_dir

    @property
    def cam_dir(self) -> Path:
        return self.out_dir / 'cam'

    @property
    def relation_label_dir(self) -> Path:
        """make_relation_labels' label maps (IRNet's IR labels, AffinityNet's la/ha rule)."""
        return self.out_dir / 'relation_label'

    @property
    def sem_seg_dir(self) -> Path:
        return self.out_dir / 'sem_seg'

    @property
    def weights_dir(self) -> Path:
        return self.out_dir / 'weights'

    @property
    def metrics_dir(self) -> Path:
        return self.out_dir / 'metrics'

    @property
    def object_bank_dir(self) -> Path:
        return self.work_dir / 'object_bank'

    @property
    def dataset_root(self) -> Path:
        """The VOC-layout folder the steps read (JPEGImages, SegmentationClass, ImageSets): on VOC the
        given devkit or the synthetic one under work_dir; on COCO the view that coco14.dataset makes of
        `coco_source` under work_dir (links to the images, class-mask PNGs, the lists)."""
        if self.dataset == 'coco14':
            return self.work_dir / 'coco14'
        return self.voc12_root if self.voc12_root is not None else self.work_dir / 'synthetic_voc'

    @property
    def coco_source(self) -> Path:
        """The COCO 2014 folder read (train2014/, val2014/, annotations/): --coco_root or the synthetic one."""
        return self.coco_root if self.coco_root is not None else self.work_dir / 'synthetic_coco'

    @property
    def real_data(self) -> bool:
        """A dataset root was given (else the synthetic stand-in of the dataset is generated)."""
        return (self.coco_root if self.dataset == 'coco14' else self.voc12_root) is not None

    def to_json(self) -> str:
        def encode(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, tuple):
                return [encode(v) for v in value]
            return value
        return json.dumps({k: encode(v) for k, v in dataclasses.asdict(self).items()}, indent=2)


# Per-profile defaults; explicit flags override them.
PROFILES: dict[str, dict[str, Any]] = {
    'paper': {},
    # The demos' shared values (a 2-core CPU, baseline + CDA, every step, about 15 minutes); each method's module
    # adjusts them (methods/irn.py: the VOC IRNet demo's sizes). How each value was chosen: docs/demo.md.
    'demo': dict(
        backbone='resnet18', pretrained='none', synthetic_n_train=300, synthetic_n_val=100,
        synthetic_n_shift=100, synthetic_size=128, cam_crop_size=96, cam_resize_long=(72, 128), cam_batch_size=16,
        cam_num_epoches=8, cam_learning_rate=0.1, cam_scales=(1.0, 0.5, 1.5),
        cam_val_interval=8,          # the val loss once, after the last epoch (the same weights, a minute less)
        irn_crop_size=128, irn_batch_size=16, irn_num_epoches=4, irn_learning_rate=0.1,
        # stricter IR labels and a fine-tuned IRN backbone: a from-scratch classifier is weaker than VOC's
        cam_eval_thres=0.2, conf_fg_thres=0.5, conf_bg_thres=0.2, irn_backbone_lr_mult=1.0, exp_times=5,
        ins_seg_coco=True,
    ),
    # Seconds to a couple of minutes: tests and CI.
    'smoke': dict(
        backbone='resnet18', pretrained='none', synthetic_n_train=16, synthetic_n_val=8,
        synthetic_n_shift=4, synthetic_size=64, cam_crop_size=64, cam_resize_long=(48, 80), cam_batch_size=8,
        cam_num_epoches=1, cam_scales=(1.0, 0.5), irn_crop_size=96, irn_batch_size=8,
        irn_num_epoches=1, num_workers=0,
        cam_eval_thres=0.5, conf_fg_thres=0.6, conf_bg_thres=0.3, sem_seg_bg_thres=0.5, ins_seg_coco=True,
    ),
}


# Per-dataset settings over the method's, for each profile (COCO's: docs/coco.md gives each one's source).
# IRNet on COCO (ReCAM's run_sample_coco.py, the IRNet-family COCO script): CAM 5 epochs, batch 16, lr 0.1,
# crop 512, eval threshold 0.15; IR labels 0.30 / 0.05; IRN 3 epochs, batch 32, crop 512; beta 10, 2^8
# steps, walk background 0.25: the VOC paper values, so 'paper' changes nothing for --dataset coco14.
DATASET_PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    'voc12': {},
    'coco14': {
        'paper': {},
        # A from-scratch classifier needs a dozen images a class: 480 over 80 classes left the CAMs at 0.9 mIoU,
        # over 40 at 2.9. The loss averages over all 80 outputs, so each class's gradient is a quarter of VOC's:
        # lr 0.4 (4 x 0.1) made the 40-class CAMs 25.8 (docs/coco.md, "The demo")
        # CAM batch and IRN crop and epochs as measured there, not the VOC IRNet demo's (methods/irn.py); like the
        # lr, the batch reaches the other methods on COCO too (theirs is 16 as well)
        'demo': dict(synthetic_n_train=480, synthetic_n_val=120, synthetic_n_shift=0, synthetic_n_classes=40,
                     cam_learning_rate=0.4, cam_batch_size=16, irn_crop_size=128, irn_num_epoches=4),
        'smoke': dict(synthetic_n_train=24, synthetic_n_val=8, synthetic_n_shift=0),
    },
}


@dataclass(frozen=True)
class MethodSpec:
    """What the command line needs of a method (its module under methods/, handed in by step.registry)."""
    name: str
    help: str
    profiles: Mapping[str, Mapping[str, Any]]      # 'paper' and per-profile settings over PROFILES
    validate: Callable[['Config'], list[str]]      # its own checks, after the shared ones


# The segmentation network per profile, for every method. Demo: a small from-scratch DeepLab-v2 sized for the
# CPU (ASPP rates 1-4 fit its 8 x 8 crop features; one lr, since the head multipliers made it unstable from
# scratch); docs/segmentation.md gives its cost and figures. Smoke: a few iterations.
SEG_PROFILES: dict[str, dict[str, Any]] = {
    'demo': dict(seg_network='deeplabv2_resnet18', seg_pretrained='none', seg_width=16, seg_msc_scales=(),
                 seg_aspp_rates=(1, 2, 3, 4), seg_iterations=300, seg_batch_size=8, seg_learning_rate=0.01,
                 seg_weight_decay=1e-4, seg_crop_size=64, seg_scales=(0.75, 1.0, 1.25), seg_checkpoint_every=100),
    'smoke': dict(seg_network='deeplabv2_resnet18', seg_pretrained='none', seg_width=16, seg_msc_scales=(0.5,),
                  seg_aspp_rates=(1, 2, 3, 4),
                  seg_iterations=4, seg_batch_size=4, seg_learning_rate=0.002, seg_crop_size=48,
                  seg_scales=(0.75, 1.0), seg_checkpoint_every=2),
}


@dataclass(frozen=True)
class Catalog:
    """The steps and methods the parser offers (step.registry.catalog() builds it)."""
    pass_steps: tuple[str, ...]                    # one pass's slots, in order
    cda_steps: tuple[str, ...]                     # the object bank, then cda_<slot> for each slot
    step_aliases: Mapping[str, str]                # the reference's names -> slot names
    methods: Mapping[str, MethodSpec]
    bound_steps: tuple[str, ...] = ()              # fs_<slot>: the segmentation network on the ground truth

    @property
    def all_steps(self) -> tuple[str, ...]:
        return self.pass_steps + self.cda_steps + self.bound_steps


def profile_values(method: MethodSpec, profile: str, dataset: str = 'voc12') -> dict[str, Any]:
    """The defaults of a (method, profile, dataset), before explicit flags."""
    own, data = method.profiles, DATASET_PROFILES[dataset]
    return {**own.get('paper', {}), **data.get('paper', {}), **PROFILES[profile], **SEG_PROFILES.get(profile, {}),
            **own.get(profile, {}),
            **(data.get(profile, {}) if profile != 'paper' else {})}


class _BoolFlag(argparse.Action):
    """`--flag`, `--flag true|false`, `--flag=false`, and the negative forms `--no-flag` / `--no_flag`."""

    def __init__(self, option_strings, dest, **kwargs):
        positive = [o for o in option_strings]
        negatives = []
        for option in positive:
            if option.startswith('--'):
                negatives += [f'--no-{option[2:]}', f'--no_{option[2:]}']
        kwargs.pop('nargs', None)
        super().__init__(positive + negatives, dest, nargs='?', type=str2bool, **kwargs)
        self._negatives = set(negatives)

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in self._negatives:
            if values is not None:
                parser.error(f'{option_string} takes no value')
            setattr(namespace, self.dest, False)
        else:
            setattr(namespace, self.dest, True if values is None else str2bool(values))


def build_parser(catalog: Catalog) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='run_sample.py', argument_default=argparse.SUPPRESS,
        description='IRNet + Context Decoupling Augmentation: weakly supervised semantic segmentation '
                    'pseudo masks from image-level labels. With no --voc12_root, runs the demo on a '
                    'generated VOC-format dataset.')
    d = Config()

    def add(*names, help_text='', **kw):
        p.add_argument(*names, help=help_text, **kw)

    g = p.add_argument_group('dataset')
    g.add_argument('--dataset', choices=tuple(DATASET_PROFILES), help='voc12 (PASCAL VOC 2012, default) or coco14 '
                   '(MS COCO 2014, 80 classes; docs/coco.md): sets the class count of every step')
    g.add_argument('--coco_root', '--coco-root', '--mscoco_root', dest='coco_root', type=Path,
                   help='--dataset coco14: the folder holding train2014/, val2014/ and annotations/instances_'
                   '{train,val}2014.json; omitted: a synthetic COCO-format dataset is generated under the work dir')
    g.add_argument('--voc12_root', '--voc12-root', type=Path, help='VOC2012 devkit folder (holds JPEGImages); '
                   'omitted: a synthetic VOC-format dataset is generated under the work dir')
    g.add_argument('--sbd_root', '--sbd-root', type=Path, help='SBD folder with train.txt/val.txt, for train_aug')
    g.add_argument('--train_list', type=str, help='list file or split name for CAM/IRN training (default train_aug)')
    g.add_argument('--val_list', type=str, help='list file or split name for CAM validation (default val)')
    g.add_argument('--infer_list', type=str, help='list file or split name for pseudo masks (default train)')
    g.add_argument('--chainer_eval_set', '--eval_set', dest='chainer_eval_set', type=str,
                   help=f'split evaluated by eval_cam/eval_sem_seg (default {d.chainer_eval_set}; shift: the '
                   'synthetic context-shift split, for eval_cam: its CAMs are made, not its pseudo masks)')

    g = p.add_argument_group('run')
    g.add_argument('--work_dir', '--work-dir', type=Path, help='every output goes here (default work_dir)')
    g.add_argument('--profile', choices=sorted(PROFILES), help='paper (default with --voc12_root), '
                   'demo (default without), smoke (tests)')
    g.add_argument('--device', choices=('auto', 'cpu', 'cuda'))
    g.add_argument('--seed', type=int)
    g.add_argument('--deterministic', action=_BoolFlag, help='deterministic algorithms (slower)')
    g.add_argument('--num_workers', '--num-workers', type=non_negative_int)
    g.add_argument('--overwrite', action=_BoolFlag, help='redo per-image outputs that already exist')
    g.add_argument('--resume', action=_BoolFlag, help='continue training from the last epoch checkpoint')
    g.add_argument('--debug', action=_BoolFlag, help='show tracebacks for input errors')
    g.add_argument('--progress', choices=('auto', 'bar', 'log', 'off'), help='progress bars (bar), one log line '
                   'every 30 s (log, for cluster logs), or none; auto (default): bar on a terminal, log otherwise')
    g.add_argument('--amp', action=_BoolFlag, help='autocast on CUDA (bf16 where supported)')
    g.add_argument('--channels_last', action=_BoolFlag, help='channels_last memory format on CUDA')
    g.add_argument('--augment_on_device', action=_BoolFlag, help='on CUDA, leave the training samples\' resize '
                   'and colour jitter to the GPU, bit-identical to the loader workers\' (default on; '
                   '--no-augment_on_device keeps them in the workers)')
    g.add_argument('--pretrained', type=str, help='imagenet (torchvision weights, cached), none '
                   '(from scratch, trainable BN), or PATH to a torchvision ResNet state dict')
    g.add_argument('--backbone', choices=('resnet50', 'resnet18', 'resnet38'), help='resnet50/resnet18 for irn, '
                   'resnet38 for affinitynet and seam (set by --method)')
    g.add_argument('--backbone_width', type=positive_float, help='ResNet-38 channel factor (e.g. 0.125 for the '
                   'CPU demo); below 1 needs --pretrained none')
    g.add_argument('--cam_weights', type=Path, help='trained CAM network of a reference implementation (irn '
                   'res50_cam.pth, psa res38_cls.pth, the CDA release): train_cam is skipped, these are used')
    g.add_argument('--relation_weights', '--irn_weights', dest='relation_weights', type=Path,
                   help='trained relation network (irn res50_irn.pth, psa res38_aff.pth): train_relation is '
                   'skipped, these are used (--irn_weights: the reference\'s name)')
    g.add_argument('--method', choices=tuple(catalog.methods), help=', '.join(m.help for m in
                   catalog.methods.values()) + ': which steps fill the pipeline, with their paper settings')
    g.add_argument('--steps', type=str, help=f'comma-separated steps to run; known: {",".join(catalog.all_steps)} '
                   f'(and the reference\'s names {",".join(catalog.step_aliases)})')

    g = p.add_argument_group('CAM')
    g.add_argument('--cam_network', type=str)
    g.add_argument('--cam_crop_size', type=positive_int)
    g.add_argument('--cam_resize_long', type=positive_int, nargs=2)
    g.add_argument('--cam_batch_size', type=positive_int)
    g.add_argument('--cam_num_epoches', type=positive_int)
    g.add_argument('--cam_val_interval', type=positive_int,
                   help='validation loss every N epochs and after the last one (1: every epoch, as IRNet)')
    g.add_argument('--cam_learning_rate', type=positive_float)
    g.add_argument('--cam_weight_decay', type=float)
    g.add_argument('--cam_eval_thres', type=unit_float)
    g.add_argument('--cam_scales', type=positive_float, nargs='+')
    g.add_argument('--cam_color_jitter', type=float, nargs=4, metavar=('BRIGHTNESS', 'CONTRAST', 'SATURATION',
                   'HUE'), help='colour jitter of CAM training (PSA/SEAM 0.3 0.3 0.3 0.1; 0 0 0 0 = off)')
    g.add_argument('--cam_dropout', action=_BoolFlag,
                   help='ResNet-38 CAM networks: the reference\'s channel dropout (b6 0.3, b7 and before the '
                        'classifier 0.5); off in the from-scratch demos')

    g = p.add_argument_group('IR labels and IRN')
    g.add_argument('--conf_fg_thres', type=unit_float)
    g.add_argument('--conf_bg_thres', type=unit_float)
    g.add_argument('--irn_network', type=str)
    g.add_argument('--irn_crop_size', type=positive_int)
    g.add_argument('--irn_rescale', type=positive_float, nargs=2)
    g.add_argument('--irn_batch_size', type=positive_int)
    g.add_argument('--irn_num_epoches', type=positive_int)
    g.add_argument('--irn_learning_rate', type=positive_float)
    g.add_argument('--irn_weight_decay', type=float)
    g.add_argument('--irn_backbone_lr_mult', type=float, help='from scratch (--pretrained none) only: fine-tune '
                   'the IRN backbone (initialised from the CAM network) at this multiple of --irn_learning_rate; '
                   '0 keeps it frozen, as the reference does with ImageNet weights')
    g.add_argument('--beta', type=positive_int)
    g.add_argument('--exp_times', type=non_negative_int)
    g.add_argument('--sem_seg_bg_thres', type=unit_float)
    g.add_argument('--sweep', type=unit_float, nargs='+', help='background thresholds that eval_cam and '
                   'eval_sem_seg evaluate in one pass (e.g. 0.05 0.1 ... 0.95)')
    g.add_argument('--ins_seg_bg_thres', type=unit_float, help='background score of the instance masks')
    g.add_argument('--ins_seg_coco', action=_BoolFlag, help='make_ins_seg also writes the train list\'s '
                   'instance pseudo masks as COCO JSON (<pass>/coco/ins_seg_train.json), for Mask R-CNN')

    g = p.add_argument_group('AffinityNet steps (--method affinitynet, seam)')
    g.add_argument('--crf_la_alpha', type=positive_float, help='background power of the low-alpha CRF labels')
    g.add_argument('--crf_ha_alpha', type=positive_float, help='background power of the high-alpha CRF labels')
    g.add_argument('--aff_crop_size', type=positive_int, help='AffinityNet training crop (a multiple of 8, >= 72)')
    g.add_argument('--aff_batch_size', type=positive_int)
    g.add_argument('--aff_num_epoches', type=positive_int)
    g.add_argument('--aff_learning_rate', type=positive_float)
    g.add_argument('--aff_weight_decay', type=float)
    g.add_argument('--rw_alpha', type=positive_float, help='background power of the walked scores (the walk '
                   'itself uses --beta and 2^--exp_times steps)')
    g.add_argument('--rw_crf', action=_BoolFlag, help='SEAM\'s infer_aff.py --crf: one iteration of the soft CRF '
                   'on the walked scores before the argmax (off by default, as in SEAM)')

    g = p.add_argument_group('SEAM (--method seam)')
    g.add_argument('--seam_scale', type=unit_float, help='downscale of the second branch (default 0.3)')
    g.add_argument('--seam_ecr_ratio', type=unit_float, help='share of the hardest entries ECR averages '
                   '(default 0.2)')
    g.add_argument('--seam_min_pool', action=_BoolFlag, help='the reference code\'s adaptive min-pooling '
                   'loss, not in the paper (default true; --no-seam_min_pool drops it)')
    g.add_argument('--cda_seam_equivariance', action=_BoolFlag, help='CDA pass: the pasted images go through '
                   'both branches and every SEAM loss, as the originals (default true; '
                   '--no-cda_seam_equivariance: the full-size branch and the classification loss only)')

    g = p.add_argument_group('CDA')
    g.add_argument('--cda', action=_BoolFlag, help='baseline, object bank, then the CDA pass')
    g.add_argument('--cda_only', action=_BoolFlag, help='object bank and CDA pass from existing baseline outputs')
    g.add_argument('--cda_bank_source', type=Path, help='folder of VOC-style label PNGs for the object bank '
                   '(default: the baseline pseudo masks)')
    g.add_argument('--cda_min_fg_ratio', type=unit_float)
    g.add_argument('--cda_max_fg_ratio', type=unit_float)
    g.add_argument('--cda_min_visible', type=unit_float)
    g.add_argument('--cda_schedule', choices=('quirk', 'full'))
    g.add_argument('--cda_variant', choices=('rotate', 'scale', 'blur'))
    g.add_argument('--cda_paste_context', choices=('any', 'usual', 'foreign'),
                   help='control experiment on the synthetic dataset: paste only classes whose usual scene '
                        'is (usual) or is not (foreign) the image\'s scene; any = CDA')

    g = p.add_argument_group('segmentation network (train_seg, make_seg, eval_seg; docs/segmentation.md)')
    g.add_argument('--seg_network', choices=('deeplabv2', 'deeplabv2_resnet18', 'deeplabv3_resnet50',
                                             'deeplabv3_resnet101'),
                   help='deeplabv2: DeepLab-v2 ResNet-101 MSC as deeplab-pytorch trains it (default with a dataset); '
                        'deeplabv2_resnet18: the CPU demo\'s small one, from scratch; deeplabv3_*: torchvision\'s')
    g.add_argument('--seg_pretrained', type=str, help='deeplabv2: PATH of deeplab-pytorch\'s init file '
                   '(deeplabv1_resnet101-imagenet.pth or -coco.pth), or none; deeplabv3_*: imagenet, none or PATH '
                   'of a torchvision ResNet state dict')
    g.add_argument('--seg_weights', type=Path, help='a trained segmentation network (deeplab-pytorch MSC checkpoint '
                   'or weights/seg.pt): train_seg is skipped, make_seg uses it')
    g.add_argument('--seg_iterations', type=positive_int)
    g.add_argument('--seg_batch_size', type=positive_int, help='images per optimizer step (default 10)')
    g.add_argument('--seg_accumulate', type=positive_int, help='chunks each batch is split into (2: the '
                   'reference\'s 5 x 2); the chunk losses are averaged')
    g.add_argument('--seg_learning_rate', type=positive_float)
    g.add_argument('--seg_momentum', type=float)
    g.add_argument('--seg_weight_decay', type=float)
    g.add_argument('--seg_lr_step', type=positive_int, help='iterations between poly lr updates (default 10)')
    g.add_argument('--seg_crop_size', type=positive_int)
    g.add_argument('--seg_scales', type=positive_float, nargs='+', help='training rescale factors')
    g.add_argument('--seg_msc_scales', type=positive_float, nargs='*', help='DeepLab-v2\'s extra input scales '
                   '(default 0.5 0.75; none: one scale)')
    g.add_argument('--seg_width', type=positive_int, help='stem channels of deeplabv2_resnet18')
    g.add_argument('--seg_aspp_rates', type=positive_int, nargs='+', help='ASPP atrous rates (default 6 12 18 24)')
    g.add_argument('--seg_checkpoint_every', type=positive_int)
    g.add_argument('--seg_crf', action=_BoolFlag, help='also the dense-CRF predictions (default true)')
    g.add_argument('--seg_test_list', type=str, help='list file or split (e.g. test) that make_seg predicts into '
                   'results/VOC2012/Segmentation/comp6_test_cls/ and a .tar.gz for the evaluation server')

    g = p.add_argument_group('synthetic dataset')
    g.add_argument('--synthetic_n_train', '--n_train', type=positive_int)
    g.add_argument('--synthetic_n_val', '--n_val', type=positive_int)
    g.add_argument('--synthetic_n_shift', '--n_shift', type=non_negative_int,
                   help='images of the held-out context-shift split (every object outside its usual scene), '
                        'evaluated by eval_cam (demo 100, smoke 4, paper 0)')
    g.add_argument('--synthetic_size', '--image_size', type=positive_int)
    g.add_argument('--synthetic_n_classes', '--n_classes', type=non_negative_int,
                   help='synthetic COCO only: draw the images from this many of the 80 classes, every '
                        '(80 // N)-th (coco14 demo 40; 0: all 80)')
    g.add_argument('--context_bias', type=unit_float)

    g = p.add_argument_group('step switches (true/false, or --no-...; the reference\'s names are aliases)')
    aliases_of: dict[str, list[str]] = {}
    for old, new in catalog.step_aliases.items():
        aliases_of.setdefault(new, []).append(old)
    for step in catalog.all_steps:
        names = [f'--{step}_pass'] + [f'--{old}_pass' for old in aliases_of.get(step, ())]
        g.add_argument(*names, action=_BoolFlag, dest=f'{step}_pass')
    return p


def parse_config(argv: Optional[Sequence[str]], catalog: Catalog) -> Config:
    """Parse flags into a Config, with the steps and methods of `catalog` (step.registry.parse_config passes
    the registry's); raise SystemExit (argparse) with one line for bad values."""
    parser = build_parser(catalog)
    explicit = vars(parser.parse_args(argv))
    dataset = explicit.get('dataset', 'voc12')
    root_flag = 'coco_root' if dataset == 'coco14' else 'voc12_root'
    default_profile = 'paper' if explicit.get(root_flag) is not None else 'demo'
    profile = explicit.get('profile', default_profile)
    method = explicit.get('method', 'irn')
    values: dict[str, Any] = profile_values(catalog.methods[method], profile, dataset)
    values['profile'] = profile

    switches = {k[:-len('_pass')]: v for k, v in explicit.items() if k.endswith('_pass')}
    explicit_cda = explicit.pop('cda', None)
    cda, cda_only = bool(explicit_cda), explicit.pop('cda_only', False)
    steps_arg = explicit.pop('steps', None)
    for key, value in explicit.items():
        if key.endswith('_pass'):
            continue
        values[key] = tuple(value) if isinstance(value, list) else value

    all_steps = catalog.all_steps
    if steps_arg is not None:
        steps = [catalog.step_aliases.get(s.strip(), s.strip()) for s in steps_arg.split(',') if s.strip()]
        unknown = [s for s in steps if s not in all_steps]
        if unknown:
            parser.error(f'--steps: unknown step(s) {",".join(unknown)}; known: {",".join(all_steps)}')
    elif cda_only:
        steps = list(catalog.cda_steps)
    elif cda or (profile == 'demo' and explicit_cda is None):
        steps = list(catalog.pass_steps + catalog.cda_steps)   # the demo shows baseline and CDA unless told
        if profile in ('demo', 'smoke'):                          # otherwise, and the fully supervised bound
            steps += list(catalog.bound_steps)                    # on the synthetic data
    else:
        steps = list(catalog.pass_steps)
    for step, on in switches.items():
        if on and step not in steps:
            steps.append(step)
        if not on and step in steps:
            steps.remove(step)
    values['steps'] = tuple(s for s in all_steps if s in steps)

    cfg = Config(**values)
    problems = validate(cfg) + catalog.methods[cfg.method].validate(cfg)
    if problems:
        parser.error(problems[0])
    return cfg


def validate(cfg: Config) -> list[str]:
    """Values that parse but cannot work together, for every method (each method's own checks are its
    `validate`); each a one-line message naming the flag."""
    problems = []
    if cfg.synthetic_n_classes and (cfg.dataset != 'coco14' or cfg.real_data or cfg.synthetic_n_classes > 80):
        problems.append(f'--synthetic_n_classes {cfg.synthetic_n_classes}: for the synthetic COCO only '
                        '(--dataset coco14 without --coco_root), at most 80')
    if cfg.cda_min_fg_ratio > cfg.cda_max_fg_ratio:
        problems.append('--cda_min_fg_ratio is above --cda_max_fg_ratio')
    if any(s.startswith('cda_train_cam') for s in cfg.steps) and cfg.cam_batch_size < 2:
        problems.append(f'--cam_batch_size {cfg.cam_batch_size} is too small for CDA: each batch holds '
                        'B/2 images and their B/2 pasted versions, so use 2 or more')
    if cfg.cam_resize_long[0] > cfg.cam_resize_long[1]:
        problems.append('--cam_resize_long: the first value (min) is above the second (max)')
    resnet38 = cfg.backbone == 'resnet38'
    if cfg.pretrained not in ('imagenet', 'none') and not Path(cfg.pretrained).is_file():
        what = ('ResNet-38 ImageNet weights (ilsvrc-cls_rna-a1_cls1000_ep-0001.params or the converted .pth)'
                if resnet38 else 'a torchvision ResNet state dict')
        problems.append(f'--pretrained {cfg.pretrained}: no such file; give imagenet, none, or the path of {what}')
    if not 0 < cfg.backbone_width <= 1 or (cfg.backbone_width != 1 and cfg.pretrained != 'none'):
        problems.append(f'--backbone_width {cfg.backbone_width}: must be in (0, 1], and below 1 only with '
                        '--pretrained none (ImageNet weights exist at full width only)')
    for flag in ('cam_weights', 'relation_weights'):
        path = getattr(cfg, flag)
        if path is not None and not Path(path).is_file():
            problems.append(f'--{flag} {path}: no such file')
    if any(not 0 <= v for v in cfg.cam_color_jitter) or cfg.cam_color_jitter[3] > 0.5:
        problems.append(f'--cam_color_jitter {cfg.cam_color_jitter}: strengths must be >= 0 and the hue at most 0.5')
    if cfg.cda_paste_context != 'any' and cfg.real_data and cfg.dataset == 'voc12' \
            and not (cfg.voc12_root / 'scenes.json').is_file():
        problems.append('--cda_paste_context needs the synthetic dataset (its scenes.json); use any on real data')
    if cfg.cda_paste_context != 'any' and cfg.dataset == 'coco14' and cfg.real_data:
        problems.append('--cda_paste_context needs the synthetic dataset (its scenes.json); use any on real data')
    if cfg.dataset == 'coco14' and cfg.voc12_root is not None:
        problems.append('--voc12_root is for --dataset voc12; give the COCO folder as --coco_root')
    if cfg.dataset == 'voc12' and cfg.coco_root is not None:
        problems.append('--coco_root needs --dataset coco14')
    if cfg.device == 'cuda':
        import torch
        if not torch.cuda.is_available():
            problems.append('--device cuda: no CUDA GPU is visible; use --device cpu (or auto)')
    # segmentation network
    if cfg.seg_weights is not None and not Path(cfg.seg_weights).is_file():
        problems.append(f'--seg_weights {cfg.seg_weights}: no such file')
    if cfg.seg_pretrained not in ('imagenet', 'none') and not Path(cfg.seg_pretrained).is_file():
        problems.append(f'--seg_pretrained {cfg.seg_pretrained}: no such file; give deeplab-pytorch\'s init file '
                        '(deeplabv2), imagenet or a torchvision ResNet state dict (deeplabv3_*), or none')
    if cfg.seg_batch_size % cfg.seg_accumulate:
        problems.append(f'--seg_batch_size {cfg.seg_batch_size} does not split into --seg_accumulate '
                        f'{cfg.seg_accumulate} equal chunks')
    if cfg.seg_crop_size < 16:
        problems.append(f'--seg_crop_size {cfg.seg_crop_size}: at least 16 (output stride 8, and MSC halves it)')
    return problems


def with_stage(cfg: Config, stage: str) -> Config:
    return dataclasses.replace(cfg, stage=stage)


# Fields renamed since a config.json may have been written: old name -> new name.
RENAMED_FIELDS = {'irn_weights': 'relation_weights'}


def from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a Config from `config.json` (tuples and paths restored)."""
    fields = {f.name: f for f in dataclasses.fields(Config)}
    out = {}
    for key, value in values.items():
        key = RENAMED_FIELDS.get(key, key)
        if key not in fields:
            continue
        default = getattr(Config(), key)
        if isinstance(value, list):
            value = tuple(value)
        elif isinstance(default, Path) or key in ('voc12_root', 'coco_root', 'sbd_root', 'cda_bank_source', 'cam_weights',
                                                  'relation_weights', 'seg_weights'):
            value = Path(value) if value is not None else None
        out[key] = value
    return Config(**out)
