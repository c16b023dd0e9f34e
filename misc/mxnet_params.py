"""Read MXNet's NDArray `.params` files without MXNet, and rename ResNet-38's tensors to the torch names.

File layout (little-endian), as `mxnet.nd.save` writes a dict:
  uint64 0x112 (list magic), uint64 0 (reserved)
  uint64 n, then n arrays
  uint64 n, then n names, each uint64 length + UTF-8 bytes (`arg:`/`aux:` prefixed in saved models)
One array, in one of the formats MXNet has written over the years:
  legacy  uint32 ndim, ndim x uint32 dims                      (no magic: the first word is ndim)
  v1      uint32 0xF993FAC8, uint32 ndim, ndim x int64 dims
  v2/v3   uint32 0xF993FAC9/0xF993FACA, int32 storage type (0 = dense; sparse is refused),
          uint32 ndim (int32 in v3), ndim x int64 dims
then, unless the shape is empty: int32 device type, int32 device id, int32 dtype flag, the raw data.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from misc.imutils import BadInputError

# The ImageNet ResNet-38 ("model A1") file this reader exists for; net.resnet38 names it in its messages.
PARAMS_FILE = 'ilsvrc-cls_rna-a1_cls1000_ep-0001.params'
LIST_MAGIC = 0x112
V1_MAGIC, V2_MAGIC, V3_MAGIC = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
DTYPES = {0: np.float32, 1: np.float64, 2: np.float16, 3: np.uint8, 4: np.int32, 5: np.int8, 6: np.int64}


class _Reader:
    def __init__(self, stream: BinaryIO, source: str):
        self.stream, self.source = stream, source

    def read(self, n: int) -> bytes:
        data = self.stream.read(n)
        if len(data) != n:
            raise BadInputError(f'{self.source}: truncated MXNet .params file (wanted {n} bytes, got {len(data)}); '
                                're-download it')
        return data

    def unpack(self, fmt: str):
        values = struct.unpack('<' + fmt, self.read(struct.calcsize('<' + fmt)))
        return values[0] if len(values) == 1 else values


def _read_array(r: _Reader) -> np.ndarray:
    first = r.unpack('I')
    if first in (V2_MAGIC, V3_MAGIC):
        storage = r.unpack('i')
        if storage not in (0, -1):
            raise BadInputError(f'{r.source}: sparse NDArray (storage type {storage}) not supported; '
                                'expected the dense ImageNet weights')
        ndim = r.unpack('i' if first == V3_MAGIC else 'I')
        shape = r.unpack(f'{ndim}q') if ndim > 0 else ()
    elif first == V1_MAGIC:
        ndim = r.unpack('I')
        shape = r.unpack(f'{ndim}q') if ndim > 0 else ()
    else:                       # legacy: the word just read is ndim, dims are uint32
        ndim = first
        if ndim > 32:
            raise BadInputError(f'{r.source}: not an MXNet NDArray file (bad array header {first:#x})')
        shape = r.unpack(f'{ndim}I') if ndim > 0 else ()
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if ndim <= 0:
        return np.zeros((0,), np.float32)
    r.unpack('ii')              # device type and id of the saved array: irrelevant here
    flag = r.unpack('i')
    if flag not in DTYPES:
        raise BadInputError(f'{r.source}: unknown NDArray dtype flag {flag}')
    dtype = np.dtype(DTYPES[flag]).newbyteorder('<')
    count = int(np.prod(shape))
    return np.frombuffer(r.read(count * dtype.itemsize), dtype=dtype).reshape(shape).astype(DTYPES[flag])


def read_params(path: str | Path) -> dict[str, np.ndarray]:
    """{name: array} of an MXNet `.params` file, names as stored (with `arg:`/`aux:` prefixes)."""
    path = Path(path)
    try:
        stream = open(path, 'rb')
    except OSError as e:
        raise BadInputError(f'{path}: cannot open ({e.strerror})') from None
    with stream:
        r = _Reader(stream, str(path))
        magic, _reserved = r.unpack('QQ')
        if magic != LIST_MAGIC:
            raise BadInputError(f'{path}: not an MXNet NDArray .params file (header {magic:#x}, expected '
                                f'{LIST_MAGIC:#x})')
        arrays = [_read_array(r) for _ in range(r.unpack('Q'))]
        names = [r.read(r.unpack('Q')).decode('utf-8') for _ in range(r.unpack('Q'))]
    if len(names) != len(arrays):
        raise BadInputError(f'{path}: {len(arrays)} arrays but {len(names)} names; expected a saved dict')
    return dict(zip(names, arrays))


def write_params(path: str | Path, arrays: dict[str, np.ndarray], version: int = 2) -> None:
    """Write {name: array} in the .params layout (`version` 0 = legacy, 1, 2): for tests and round trips."""
    codes = {np.dtype(v): k for k, v in DTYPES.items()}
    with open(path, 'wb') as f:
        f.write(struct.pack('<QQQ', LIST_MAGIC, 0, len(arrays)))
        for array in arrays.values():
            array = np.ascontiguousarray(array)
            if version == 0:
                f.write(struct.pack(f'<I{array.ndim}I', array.ndim, *array.shape))
            elif version == 1:
                f.write(struct.pack(f'<II{array.ndim}q', V1_MAGIC, array.ndim, *array.shape))
            else:
                f.write(struct.pack(f'<IiI{array.ndim}q', V2_MAGIC, 0, array.ndim, *array.shape))
            f.write(struct.pack('<iii', 1, 0, codes[array.dtype]))
            f.write(array.astype(array.dtype.newbyteorder('<')).tobytes())
        f.write(struct.pack('<Q', len(arrays)))
        for name in arrays:
            data = name.encode('utf-8')
            f.write(struct.pack('<Q', len(data)) + data)


# ----------------------------------------------------------------------------- ResNet-38 names

_BN_SUFFIX = {'gamma': 'weight', 'beta': 'bias', 'mean': 'running_mean', 'var': 'running_var'}


def resnet38_torch_name(name: str) -> str | None:
    """The torch key of an ademxapp ResNet-38 ("model A1") tensor, or None for the ImageNet classifier.

    `arg:res4b5_branch2b1_weight` -> `b4_5.conv_branch2b1.weight`; `aux:bn5a_branch2a_moving_var` ->
    `b5.bn_branch2a.running_var`; `arg:bn7_gamma` -> `bn7.weight`; `arg:conv1a_weight` -> `conv1a.weight`.
    Unit names: `<level>a` is the first unit of a level (`b<level>`), `<level>b<k>` the k-th after it
    (`b<level>_<k>`).
    """
    bare = name.split(':', 1)[1] if ':' in name else name
    parts = bare.split('_')
    head = parts[0]
    if head.startswith('conv1a'):
        return 'conv1a.weight'
    if head.startswith('linear1000'):
        return None
    if len(parts) > 2 and parts[1].startswith('branch'):
        unit = head[len('res'):] if head.startswith('res') else head[len('bn'):]
        level, rest = unit[0], unit[1:]
        block = f'b{level}' if rest == 'a' else f'b{level}_{rest[1:]}'
        if head.startswith('res'):
            return f'{block}.conv_{parts[1]}.weight'
        return f'{block}.bn_{parts[1]}.{_BN_SUFFIX[parts[-1]]}'
    if head.startswith('bn') and parts[-1] in _BN_SUFFIX:     # the final BN after b7 (`bn7_*`)
        return f'bn7.{_BN_SUFFIX[parts[-1]]}'
    raise BadInputError(f'MXNet tensor {name!r}: not a ResNet-38 "model A1" name; expected {PARAMS_FILE}')


def resnet38_state_dict(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """ademxapp ResNet-38 arrays -> torch state dict in the reference key names (classifier dropped)."""
    out: dict[str, torch.Tensor] = {}
    for name, array in arrays.items():
        key = resnet38_torch_name(name)
        if key is None:
            continue
        if key in out:
            raise BadInputError(f'MXNet tensor {name!r} maps to {key}, which another tensor already took')
        out[key] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return out


def load_resnet38_params(path: str | Path) -> dict[str, torch.Tensor]:
    """The ResNet-38 ImageNet weights of an ademxapp .params file, as a torch state dict."""
    return resnet38_state_dict(read_params(path))


def main(argv: list[str] | None = None) -> int:
    """`python -m misc.mxnet_params IN.params OUT.pth`: convert once, print the key count and SHA-256."""
    import argparse
    import hashlib
    parser = argparse.ArgumentParser(description='Convert the ademxapp ResNet-38 .params file to a torch state '
                                                 'dict with the reference key names (no MXNet needed).')
    parser.add_argument('params', type=Path)
    parser.add_argument('out', type=Path)
    args = parser.parse_args(argv)
    try:
        state = load_resnet38_params(args.params)
    except BadInputError as e:
        print(f'error: {e}')
        return 2
    torch.save(state, args.out)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f'{args.out}: {len(state)} tensors (191 expected), sha256 {digest}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
