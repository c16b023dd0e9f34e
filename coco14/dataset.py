"""The COCO 2014 loader: a folder holding train2014/, val2014/ and annotations/instances_{train,val}2014.json
(the real one, or coco14.synthetic's) -> the VOC-layout view every step reads, made once under the work dir.

    <work_dir>/coco14/
        JPEGImages/<id>.jpg              links to train2014/<id>.jpg or val2014/<id>.jpg (ids are the file
                                         names without extension, COCO_train2014_000000000009)
        SegmentationClass/<id>.png       class masks 0..80 through pycocotools (coco14.annotations' convention:
                                         non-crowd instances in file order, crowd as background), palette PNGs
        SegmentationObject/<id>.png      instance maps for eval_ins_seg: k-th non-crowd instance k, crowd 255
        ImageSets/Segmentation/{train,val}.txt   the images with at least one annotation (82,081 / 40,137)
        classes.json                     the 80 names in class-index order and their COCO category ids
        scenes.json, usual_scenes.json   copied from a synthetic source (the context figures)
        view.json                        what the view was made from, written last (completion mark)
    <work_dir>/cache/cls_labels.npz      (80,) image-level labels of every image of both files, crowd included

Any other list file is accepted by --train_list etc. (one id per line), as on VOC. The masks are made in
`num_workers` processes, each given one image's annotations (not the whole index).
"""
from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from misc import imutils
from misc.dataset import DatasetInfo
from misc.imutils import BadInputError
from coco14 import annotations as coco_ann

logger = logging.getLogger(__name__)

VIEW_VERSION = 1
SPLITS = {'train': ('train2014', 'annotations/instances_train2014.json'),
          'val': ('val2014', 'annotations/instances_val2014.json')}


def check_coco_root(root: Path | None) -> None:
    """One line naming everything that is missing from a COCO 2014 folder."""
    if root is None or not Path(root).is_dir():
        raise BadInputError(f'--coco_root {root}: no such folder; give the COCO 2014 folder (holding train2014/, '
                            'val2014/ and annotations/)')
    missing = []
    for folder, annotation in SPLITS.values():
        if not (Path(root) / folder).is_dir():
            missing.append(f'{folder}/')
        if not (Path(root) / annotation).is_file():
            missing.append(annotation)
    if missing:
        raise BadInputError(f'--coco_root {root}: missing {", ".join(missing)} (the instance annotations come '
                            'from annotations_trainval2014.zip)')


@functools.lru_cache(maxsize=8)
def _info(path: str, mtime_ns: int) -> DatasetInfo:
    from voc12.classes import voc_palette
    stored = json.loads(Path(path).read_text())
    return DatasetInfo(name='coco', class_names=tuple(stored['names']), palette=tuple(voc_palette()), ignore=255,
                       category_ids=tuple(stored['category_ids']))


def dataset_info(view: Path) -> DatasetInfo:
    """The description of a prepared view: COCO's 80 class names (read from its annotation files), the
    VOC colour map for its PNGs (it has 256 entries), ignore 255 (COCO masks hold none)."""
    path = Path(view) / 'classes.json'
    if not path.is_file():
        raise BadInputError(f'{path}: missing; the COCO view is made by run_sample.py --dataset coco14 before the '
                            'steps run')
    return _info(str(path), path.stat().st_mtime_ns)


def _signature(root: Path) -> dict:
    files = {}
    for _, annotation in SPLITS.values():
        stat = (Path(root) / annotation).stat()
        files[annotation] = [stat.st_size, stat.st_mtime_ns]
    return {'version': VIEW_VERSION, 'source': str(Path(root).resolve()), 'annotations': files}


def _link(target: Path, link: Path) -> None:
    if link.is_symlink() or link.exists():
        if link.is_symlink() and os.readlink(link) == str(target):
            return
        link.unlink()
    try:
        link.symlink_to(target)
    except OSError:                     # a file system without links: copy
        shutil.copyfile(target, link)


def mask_worker(job) -> None:
    """Worker: (annotations of one image in file order, height, width, {category id: index}, output PNG,
    palette) -> the class-mask PNG."""
    anns, height, width, mapping, out_path, palette = job
    imutils.save_label_png(out_path.parent.parent / 'SegmentationObject' / out_path.name,
                           coco_ann.instance_mask_of(anns, height, width), palette)
    imutils.save_label_png(out_path, coco_ann.class_mask_of(anns, height, width, mapping), palette)


def prepare(root: Path, view: Path, cache_dir: Path,
            run_jobs: Optional[Callable[[Callable, Sequence, str], None]] = None) -> DatasetInfo:
    """Make (or find up to date) the VOC-layout view of COCO folder `root` at `view` and the label cache
    in `cache_dir`; returns the dataset description. `run_jobs(worker, jobs, desc)` runs the mask jobs
    (step.common.run_in_workers over the run's workers; in this process by default)."""
    root, view = Path(root), Path(view)
    check_coco_root(root)
    marker = view / 'view.json'
    signature = _signature(root)
    try:
        if json.loads(marker.read_text()) == signature:
            return dataset_info(view)
    except (OSError, ValueError):
        pass
    marker.unlink(missing_ok=True)
    start = time.perf_counter()
    from voc12.classes import voc_palette
    palette = tuple(voc_palette())
    names, category_ids, labels, jobs = None, None, {}, []
    (view / 'JPEGImages').mkdir(parents=True, exist_ok=True)
    (view / 'SegmentationClass').mkdir(parents=True, exist_ok=True)
    for split, (folder, annotation) in SPLITS.items():
        logger.info('COCO %s: reading %s', split, root / annotation)
        coco = coco_ann.load_coco(root / annotation)
        categories = coco.loadCats(coco.getCatIds())
        if names is None:
            names, category_ids = coco_ann.class_names(categories), sorted(int(c['id']) for c in categories)
        elif coco_ann.class_names(categories) != names:
            raise BadInputError(f'{root / annotation}: its categories differ from the train file\'s')
        mapping = coco_ann.category_index(categories)
        labels.update(coco_ann.image_labels(coco))
        ids = coco_ann.annotated_ids(coco)
        _write(view / 'ImageSets' / 'Segmentation' / f'{split}.txt', ''.join(f'{i}\n' for i in ids))
        for image in coco.loadImgs(sorted(coco.getImgIds())):
            stem = coco_ann.image_stem(image['file_name'])
            _link((root / folder / image['file_name']).resolve(), view / 'JPEGImages' / f'{stem}.jpg')
            out_path = view / 'SegmentationClass' / f'{stem}.png'
            anns = coco.imgToAnns.get(image['id'], [])
            if anns and not out_path.is_file():
                jobs.append((anns, image['height'], image['width'], mapping, out_path, palette))
        logger.info('COCO %s: %d images, %d with annotations', split, len(coco.getImgIds()), len(ids))
    mask_start = time.perf_counter()
    if run_jobs is None:
        for job in jobs:
            mask_worker(job)
    else:
        run_jobs(mask_worker, jobs, 'COCO class masks')
    if jobs:
        elapsed = time.perf_counter() - mask_start
        logger.info('COCO class masks: %d made in %.1f s (%.1f ms per image)', len(jobs), elapsed,
                    1000 * elapsed / len(jobs))
    keys = sorted(labels)
    imutils.save_npz(Path(cache_dir) / 'cls_labels.npz', ids=np.asarray(keys), labels=np.stack([labels[k] for k in keys]))
    _write(view / 'classes.json', json.dumps({'names': list(names), 'category_ids': category_ids}, indent=1))
    for name in ('scenes.json', 'usual_scenes.json'):
        if (root / name).is_file():
            shutil.copyfile(root / name, view / name)
        else:
            (view / name).unlink(missing_ok=True)
    _write(marker, json.dumps(signature, indent=1))
    logger.info('COCO view of %s made at %s in %.1f s', root, view, time.perf_counter() - start)
    return dataset_info(view)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with imutils.atomic_path(path) as tmp:
        tmp.write_text(text)
