"""Worker of tests/test_affinitynet.py's torchrun check: AffinityNet training on prepared CRF maps, dropout off.

    python tests/aff_train_worker.py OUT.pt [run_sample flags]       (or under torchrun)

Channel dropout (b6, b7) draws its masks per process, so a sharded batch cannot repeat the single-process
masks; with it off, the global pair counts and the sharded loader must give the same weights. Rank 0 saves
the trained state dict to OUT.pt.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from misc import torchutils  # noqa: E402
from step.registry import parse_config  # noqa: E402
from step import common, train_aff  # noqa: E402
from step.make_crf_labels import crf_dir  # noqa: E402
from voc12.aff_dataset import CrfAffinityDataset  # noqa: E402


def main(argv: list[str]) -> None:
    out, cfg = Path(argv[0]), parse_config(argv[1:])
    device = torch.device('cpu')
    torchutils.init_distributed(device)
    torchutils.seed_everything(cfg.seed)
    model = train_aff.build_model(cfg)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout2d):
            module.p = 0.0
    dataset = CrfAffinityDataset(common.train_ids(cfg), cfg.dataset_root, crf_dir(cfg), cfg.aff_crop_size,
                                 seed=cfg.seed)
    train_aff.fit(model, dataset, cfg, device)
    if torchutils.is_main_process():
        torch.save(model.state_dict(), out)
    if torchutils.is_distributed():
        torch.distributed.destroy_process_group()


if __name__ == '__main__':
    main(sys.argv[1:])
