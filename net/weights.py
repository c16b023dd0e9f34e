"""Trained weights of the reference repositories, mapped onto this project's networks.

`--cam_weights PATH` and `--irn_weights PATH` take a file saved by a reference implementation (or by the
CDA authors, who kept the reference's key names); the step that trains that network is then skipped and
the later steps use these weights. Files are read with `torch.load(weights_only=True)`: plain state dicts
(or a dict holding one under 'model' / 'state_dict'), never pickled objects. A `module.` prefix
(DataParallel) is dropped.

Key conventions, per network (reference file -> this project):

  PSA CAM net, psa network/resnet38_cls.Net (`res38_cls.pth`) -> net/resnet38_cls.Net
      backbone keys as psa network/resnet38d.Net (`conv1a.weight`, `b2.bn_branch2a.running_mean`, ...,
      `bn7.*`) and `fc8.weight` (20, 4096, 1, 1): identical names here, so the mapping only checks them.
  PSA AffinityNet, psa network/resnet38_aff.Net (`res38_aff.pth`) -> net/resnet38_aff.Net
      backbone keys as above plus `f8_3.weight`, `f8_4.weight`, `f8_5.weight`, `f9.weight`; identical names.
  SEAM, seam network/resnet38_SEAM.Net (`resnet38_SEAM.pth`, the CDA authors' SEAM release) -> net/resnet38_seam.Net
      backbone keys as above plus `fc8.weight` (21, 4096, 1, 1; row 0 the unused background),
      `f8_3.weight` (64, 512, 1, 1), `f8_4.weight` (128, 1024, 1, 1), `f9.weight` (192, 195, 1, 1); identical
      names (SEAM saves `model.module.state_dict()`; a `module.` prefix is dropped anyway). SEAM's AffinityNet
      (`resnet38_aff_SEAM.pth`) is psa's network: as the PSA AffinityNet above. SEAM's ImageNet weights are
      the same MXNet file as PSA's (`--pretrained`, net.resnet38).
  IRNet CAM net, irn net/resnet50_cam.Net (`res50_cam.pth`) -> net/resnet50_cam.Net
      irn holds the torchvision-named ResNet twice: `resnet50.conv1.weight`, `resnet50.layer1.0.conv1.weight`,
      ... and, through its nn.Sequential wrappers, `stage1.0.weight`, `stage1.4.0.conv1.weight`,
      `stage2.0.0.conv1.weight` (layer2 inside a one-element Sequential), ...; plus `classifier.weight`.
      Here: stage1 = (conv1, bn1, relu, maxpool, layer1), stage2..4 = layer2..4 without the extra level.
  IRNet IRN, irn net/resnet50_irn.AffinityDisplacementLoss (`res50_irn.pth`) -> net/resnet50_irn.Net
      `resnet50.*` / `stage1.*` (conv1, bn1), `stage2.0.*` .. `stage5.0.*` (layer1..4), heads `fc_edge1..6.*`,
      `fc_dp1..7.*` with the same names here; the mean shift is a BatchNorm in irn (`fc_dp7.4.running_mean`,
      `running_var`, `num_batches_tracked`): only its running_mean is used; the path index tensors saved with
      it (`path_indices*`, `ind_from`, `ind_to`) are dropped.

BatchNorm `num_batches_tracked` buffers are never required (frozen BN has no use for them).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Mapping

import torch
import torch.nn as nn

from misc.imutils import BadInputError


def read_state_dict(path: Path, flag: str) -> dict[str, torch.Tensor]:
    """A tensor state dict from a torch file, loaded with weights_only=True; `flag` names the option in
    error messages."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f'{flag} {path}: no such file')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else ''
        raise BadInputError(f'{flag} {path}: not loadable as a plain tensor state dict with weights_only=True '
                            f'({type(e).__name__}: {first}); re-save it as torch.save(model.state_dict(), path)') \
            from None
    for wrapper in ('model', 'state_dict'):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not state:
        raise BadInputError(f'{flag} {path}: holds a {type(state).__name__}, not a state dict')
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise BadInputError(f'{flag} {path}: entry {key!r} is a {type(value).__name__}, not a tensor; '
                                'expected a state dict')
        out[key.removeprefix('module.')] = value
    return out


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load `state` (this project's key names) into `model` strictly, where a tensor registered under several
    names (a module listed in two containers) needs only one of them and `num_batches_tracked` is optional.
    Raises BadInputError naming `source` on missing, unexpected or mis-shaped tensors."""
    own = model.state_dict(keep_vars=True)
    aliases: dict[int, list[str]] = {}
    for key, tensor in own.items():
        aliases.setdefault(id(tensor), []).append(key)
    merged, missing = {}, []
    for names in aliases.values():
        found = [n for n in names if n in state]
        if not found:
            if not names[0].endswith('num_batches_tracked'):
                missing.append(names[0])
            continue
        for n in names:
            merged[n] = state[found[0]]
    unexpected = [k for k in state if k not in own]
    wrong = [f'{k} {tuple(v.shape)}, expected {tuple(own[k].shape)}' for k, v in merged.items()
             if tuple(v.shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        detail = (f'{len(missing)} tensors missing (e.g. {missing[0]})' if missing else
                  f'{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})' if unexpected else
                  f'{len(wrong)} mis-shaped (e.g. {wrong[0]})')
        raise BadInputError(f'{source}: does not fit {type(model).__module__}.{type(model).__name__}: {detail}; '
                            'give weights of the network this --method trains (see net/weights.py for the '
                            'expected keys) and the matching --backbone')
    model.load_state_dict(merged, strict=False)


# ----------------------------------------------------------------------------- key mappings

def _drop_batch_counts(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.endswith('num_batches_tracked')}


def _torchvision_to_stages(state: Mapping[str, torch.Tensor], layer_to_stage: Mapping[str, str]) \
        -> dict[str, torch.Tensor]:
    """`resnet50.<part>.*` keys (torchvision names) -> this project's stage names."""
    out = {}
    for key, value in state.items():
        rest = key[len('resnet50.'):]
        part, _, tail = rest.partition('.')
        if part in layer_to_stage:
            out[layer_to_stage[part] + tail] = value
    return out


def _strip_sequential(state: Mapping[str, torch.Tensor], stages: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """irn's `stageK.0.<layer>` (a layer inside a one-element Sequential) -> `stageK.<layer>`."""
    out = {}
    for key, value in state.items():
        for stage in stages:
            if key.startswith(stage + '.0.'):
                out[stage + '.' + key[len(stage) + 3:]] = value
                break
        else:
            out[key] = value
    return out


def irn_cam_to_project(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """irn net/resnet50_cam.Net keys -> net/resnet50_cam.Net keys (see the module docstring)."""
    state = _drop_batch_counts(state)
    if any(k.startswith('resnet50.') for k in state):
        out = _torchvision_to_stages(state, {'conv1': 'stage1.0.', 'bn1': 'stage1.1.', 'layer1': 'stage1.4.',
                                             'layer2': 'stage2.', 'layer3': 'stage3.', 'layer4': 'stage4.'})
    else:
        out = _strip_sequential({k: v for k, v in state.items() if k.startswith('stage')},
                                ('stage2', 'stage3', 'stage4'))
    out.update({k: v for k, v in state.items() if k.startswith('classifier.')})
    return out


def irn_irn_to_project(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """irn net/resnet50_irn (AffinityDisplacementLoss / EdgeDisplacement) keys -> net/resnet50_irn.Net keys."""
    state = _drop_batch_counts(state)
    if any(k.startswith('resnet50.') for k in state):
        out = _torchvision_to_stages(state, {'conv1': 'stage1.0.', 'bn1': 'stage1.1.', 'layer1': 'stage2.',
                                             'layer2': 'stage3.', 'layer3': 'stage4.', 'layer4': 'stage5.'})
    else:
        out = _strip_sequential({k: v for k, v in state.items() if k.startswith('stage')},
                                ('stage2', 'stage3', 'stage4', 'stage5'))
    for key, value in state.items():
        if not key.startswith(('fc_edge', 'fc_dp')):
            continue
        if re.fullmatch(r'fc_dp7\.4\.(running_var|weight|bias)', key):
            continue        # irn's mean shift is a BatchNorm: only its running mean is used
        out[key] = value
    return out


def resnet38_to_project(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """psa/SEAM ResNet-38 networks (resnet38_cls, resnet38_aff, resnet38_SEAM): same key names here."""
    return dict(state)


def is_irn_layout(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether a ResNet-50 state dict uses irn's layout (`resnet50.*` copies or `stage2.0.0.*`)."""
    return any(k.startswith('resnet50.') for k in state) or any(k.startswith('stage2.0.0.') for k in state)


def to_project(network: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a reference state dict onto this project's module `network` (e.g. 'net.resnet50_cam'); a dict
    already in this project's layout (saved by it) passes through."""
    mappings: dict[str, Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]] = {
        'net.resnet50_cam': irn_cam_to_project, 'net.resnet50_irn': irn_irn_to_project,
    }
    if network in mappings and is_irn_layout(state):
        return mappings[network](state)
    return resnet38_to_project(state) if network.startswith('net.resnet38') else dict(state)


def load_reference_weights(model: nn.Module, network: str, path: Path, flag: str) -> nn.Module:
    """Read `path`, map its keys for `network`, load strictly into `model`; returns the model."""
    state = read_state_dict(path, flag)
    load_into(model, to_project(network, state), f'{flag} {path}')
    return model


# ----------------------------------------------------------------------------- segmentation network (DeepLab-v2)

def load_deeplab(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = 'state dict') -> nn.Module:
    """Load a kazuto1011/deeplab-pytorch state dict into `net.deeplab.DeepLabV2`; returns the model.

    Two kinds, told apart by their keys:
      trained  an MSC checkpoint (`DeepLabV2_ResNet101_MSC().state_dict()`, e.g. deeplabv2_resnet101_msc-vocaug.pth
               or a train_seg `seg.pt`'s model): keys `base.layer1.conv1.conv.weight`, ..., `base.aspp.c3.bias`;
               every tensor is required, ASPP included
      init     deeplab-pytorch's initial weights (deeplabv1_resnet101-imagenet.pth, deeplabv1_resnet101-coco.pth):
               the same keys without `base.` and without ASPP; the backbone is loaded, ASPP keeps its own
               initialisation; the pre-training classifier (`fc.*`, e.g. COCO's 91 classes) is dropped, as the
               reference's non-strict load drops it
    `num_batches_tracked` is optional (frozen BN has none). A missing, unexpected or mis-shaped tensor raises
    BadInputError naming `source` and the tensor.
    """
    state = {k.removeprefix('module.'): v for k, v in state.items() if not k.endswith('num_batches_tracked')}
    trained = any(k.startswith('base.') for k in state)
    if not trained:
        state = {f'base.{k}': v for k, v in state.items() if not k.startswith('fc.')}
    own = {k: v for k, v in model.state_dict().items() if not k.endswith('num_batches_tracked')}
    required = [k for k in own if trained or not k.startswith('base.aspp.')]
    missing = [k for k in required if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f'{k} {tuple(state[k].shape)}, expected {tuple(own[k].shape)}' for k in state
             if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    kind = 'trained MSC checkpoint' if trained else 'init file (no base. prefix)'
    if wrong:
        raise BadInputError(f'{source}: {kind}: tensor {wrong[0]} ({len(wrong)} mis-shaped); give weights of '
                            f'DeepLab-v2 ResNet-101 with {own["base.aspp.c0.bias"].numel()} classes')
    if missing:
        raise BadInputError(f'{source}: {kind}: tensor {missing[0]} missing ({len(missing)} in all); give a '
                            'deeplab-pytorch DeepLab-v2 ResNet-101 file (see net/weights.py)')
    if unexpected:
        raise BadInputError(f'{source}: {kind}: unexpected tensor {unexpected[0]} ({len(unexpected)} in all); give '
                            'a deeplab-pytorch DeepLab-v2 ResNet-101 file (see net/weights.py)')
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value)
    return model
