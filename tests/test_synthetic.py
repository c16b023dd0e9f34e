"""The synthetic VOC generator: layout, formats, label/XML agreement, determinism, context bias, CLI."""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from misc.imutils import read_label_png, read_rgb
from voc12.classes import CAT_LIST, CAT_NAME_TO_NUM, IGNORE
from voc12.synthetic import (SCENES, SHIFT_ID_PREFIX, USUAL_SCENE, generate, render_image, render_scene,
                             render_shift_image)

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ('train', 'val', 'trainval')


def read_ids(root: Path, kind: str, split: str) -> list[str]:
    return (root / 'ImageSets' / kind / f'{split}.txt').read_text().split()


def read_objects(xml_path: Path) -> list[tuple[str, tuple[int, int, int, int]]]:
    """(class name, (xmin, ymin, xmax, ymax)) per <object>, in file order."""
    root = ET.parse(xml_path).getroot()
    objects = []
    for obj in root.findall('object'):
        box = obj.find('bndbox')
        coords = tuple(int(box.find(tag).text) for tag in ('xmin', 'ymin', 'xmax', 'ymax'))
        objects.append((obj.find('name').text, coords))
    return objects


def mask_classes(label: np.ndarray) -> set[int]:
    """Class indices 0..19 present in a label map (background and ignore left out)."""
    return {int(v) - 1 for v in np.unique(label) if v not in (0, IGNORE)}


def assert_layout(root: Path, n_train: int, n_val: int) -> None:
    for kind in ('Segmentation', 'Main'):
        assert len(read_ids(root, kind, 'train')) == n_train
        assert len(read_ids(root, kind, 'val')) == n_val
        both = read_ids(root, kind, 'train') + read_ids(root, kind, 'val')
        assert read_ids(root, kind, 'trainval') == both
    for name in ('JPEGImages', 'SegmentationClass', 'Annotations'):
        assert (root / name).is_dir()
    assert (root / 'scenes.json').is_file() and (root / 'synthetic.json').is_file()


def test_layout(synthetic_voc: Path) -> None:
    assert_layout(synthetic_voc, 16, 8)
    ids = read_ids(synthetic_voc, 'Segmentation', 'trainval')
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r'\d{4}_\d{6}', i) for i in ids)  # VOC's 2007_000001 form
    train, val = read_ids(synthetic_voc, 'Segmentation', 'train'), read_ids(synthetic_voc, 'Segmentation', 'val')
    assert not set(train) & set(val)


def test_every_listed_id_has_its_files(synthetic_voc: Path) -> None:
    for image_id in read_ids(synthetic_voc, 'Segmentation', 'trainval'):
        assert (synthetic_voc / 'JPEGImages' / f'{image_id}.jpg').is_file()
        assert (synthetic_voc / 'SegmentationClass' / f'{image_id}.png').is_file()
        assert (synthetic_voc / 'Annotations' / f'{image_id}.xml').is_file()


def test_images_are_rgb_of_the_given_size(synthetic_voc: Path) -> None:
    for image_id in read_ids(synthetic_voc, 'Segmentation', 'trainval'):
        with Image.open(synthetic_voc / 'JPEGImages' / f'{image_id}.jpg') as image:
            assert image.format == 'JPEG' and image.mode == 'RGB'
            array = np.asarray(image)
        assert array.dtype == np.uint8 and array.shape == (64, 64, 3)
        assert array.std() > 5  # not a blank canvas


def test_masks_are_palette_pngs_with_voc_values(synthetic_voc: Path) -> None:
    saw_ignore = False
    for image_id in read_ids(synthetic_voc, 'Segmentation', 'trainval'):
        with Image.open(synthetic_voc / 'SegmentationClass' / f'{image_id}.png') as image:
            assert image.format == 'PNG' and image.mode == 'P'
            assert image.getpalette()[:6] == [0, 0, 0, 128, 0, 0]  # VOC colours of background, aeroplane
            label = np.asarray(image)
        assert label.shape == (64, 64)
        assert set(np.unique(label).tolist()) <= set(range(21)) | {IGNORE}
        assert mask_classes(label), f'{image_id} has no object pixel'
        assert (label == 0).any()
        saw_ignore |= bool((label == IGNORE).any())
    assert saw_ignore


def test_ignore_band_separates_regions(synthetic_voc: Path) -> None:
    """As in VOC, 255 runs along every border: no two different labels touch (8-neighbourhood), and
    every ignore pixel lies within 2 px of a labelled one (a band, not a blob)."""
    n_band = n_object = 0
    for image_id in read_ids(synthetic_voc, 'Segmentation', 'trainval'):
        label = np.asarray(Image.open(synthetic_voc / 'SegmentationClass' / f'{image_id}.png'))
        windows = np.lib.stride_tricks.sliding_window_view(np.pad(label, 1, mode='edge'), (3, 3))
        centre = label[:, :, None, None]
        clash = (windows != centre) & (windows != IGNORE) & (centre != IGNORE)
        assert not clash.any(), image_id
        band = label == IGNORE
        windows5 = np.lib.stride_tricks.sliding_window_view(np.pad(~band, 2, mode='edge'), (5, 5))
        near = windows5.any(axis=(2, 3))
        assert near[band].all(), image_id
        n_band += int(band.sum())
        n_object += int(((label > 0) & ~band).sum())
    # At 64 px a 2 px band is a large share of a thin ring, but over the set objects must dominate.
    assert 0 < n_band < n_object


def test_xml_classes_equal_mask_classes(synthetic_voc: Path) -> None:
    for image_id in read_ids(synthetic_voc, 'Segmentation', 'trainval'):
        label = np.asarray(Image.open(synthetic_voc / 'SegmentationClass' / f'{image_id}.png'))
        xml_path = synthetic_voc / 'Annotations' / f'{image_id}.xml'
        root = ET.parse(xml_path).getroot()
        assert root.findtext('filename') == f'{image_id}.jpg'
        assert root.findtext('size/width') == '64' and root.findtext('size/height') == '64'
        assert root.findtext('size/depth') == '3'
        objects = read_objects(xml_path)
        assert {CAT_NAME_TO_NUM[name] for name, _ in objects} == mask_classes(label), image_id
        assert all(obj.findtext('difficult') == '0' for obj in root.findall('object'))
        for name, (xmin, ymin, xmax, ymax) in objects:
            # VOC boxes are 1-based and inclusive; the box must hold pixels of its class.
            assert 1 <= xmin <= xmax <= 64 and 1 <= ymin <= ymax <= 64
            crop = label[ymin - 1:ymax, xmin - 1:xmax]
            assert (crop == CAT_NAME_TO_NUM[name] + 1).any()


def test_main_per_class_lists_match_annotations(synthetic_voc: Path) -> None:
    for cls, name in enumerate(CAT_LIST):
        rows = (synthetic_voc / 'ImageSets' / 'Main' / f'{name}_trainval.txt').read_text().splitlines()
        flags = {row.split()[0]: int(row.split()[1]) for row in rows}
        for image_id, flag in flags.items():
            names = {n for n, _ in read_objects(synthetic_voc / 'Annotations' / f'{image_id}.xml')}
            assert flag == (1 if name in names else -1)


def test_scenes_json(synthetic_voc: Path) -> None:
    scenes = json.loads((synthetic_voc / 'scenes.json').read_text())
    listed = read_ids(synthetic_voc, 'Segmentation', 'trainval') + read_ids(synthetic_voc, 'Segmentation', 'shift')
    assert sorted(scenes) == sorted(listed)
    assert set(scenes.values()) <= set(SCENES)
    usual = json.loads((synthetic_voc / 'usual_scenes.json').read_text())
    assert usual == {CAT_LIST[cls]: scene for cls, scene in USUAL_SCENE.items()}


def test_scene_files_match_the_generator(synthetic_voc: Path) -> None:
    """scenes.json holds the scene each image was drawn in (render_image / render_shift_image)."""
    scenes = json.loads((synthetic_voc / 'scenes.json').read_text())
    for index, image_id in enumerate(read_ids(synthetic_voc, 'Segmentation', 'trainval')):
        assert scenes[image_id] == render_image(index, size=64, seed=0).scene, image_id
    for index, image_id in enumerate(read_ids(synthetic_voc, 'Segmentation', 'shift')):
        assert scenes[image_id] == render_shift_image(index, size=64, seed=0).scene, image_id


# ----------------------------------------------------------------------------- the context-shift split

def test_shift_split_layout(synthetic_voc: Path) -> None:
    shift = read_ids(synthetic_voc, 'Segmentation', 'shift')
    assert shift == read_ids(synthetic_voc, 'Main', 'shift')
    assert len(shift) == 4 and all(i.startswith(SHIFT_ID_PREFIX) for i in shift)
    assert all(re.fullmatch(r'\d{4}_\d{6}', i) for i in shift)
    # Held out: in no train/val list (train_aug is Main/trainval minus val on this data).
    for kind in ('Segmentation', 'Main'):
        assert not set(shift) & set(read_ids(synthetic_voc, kind, 'trainval'))
    for image_id in shift:
        for sub, suffix in (('JPEGImages', 'jpg'), ('SegmentationClass', 'png'), ('SegmentationObject', 'png'),
                            ('Annotations', 'xml')):
            assert (synthetic_voc / sub / f'{image_id}.{suffix}').is_file()
    rows = (synthetic_voc / 'ImageSets' / 'Main' / 'aeroplane_shift.txt').read_text().splitlines()
    assert [row.split()[0] for row in rows] == shift


def test_shift_split_holds_only_foreign_scene_objects(synthetic_voc: Path) -> None:
    """Every object of every shift image, by its annotation and by its mask, is outside its usual scene."""
    scenes = json.loads((synthetic_voc / 'scenes.json').read_text())
    for image_id in read_ids(synthetic_voc, 'Segmentation', 'shift'):
        names = {name for name, _ in read_objects(synthetic_voc / 'Annotations' / f'{image_id}.xml')}
        label = np.asarray(Image.open(synthetic_voc / 'SegmentationClass' / f'{image_id}.png'))
        assert {CAT_NAME_TO_NUM[n] for n in names} == mask_classes(label), image_id
        for cls in mask_classes(label):
            assert USUAL_SCENE[cls] != scenes[image_id], (image_id, CAT_LIST[cls])


def test_shift_images_are_foreign_over_many_draws() -> None:
    samples = [render_shift_image(i, size=32, seed=5) for i in range(60)]
    assert all(USUAL_SCENE[cls] != s.scene for s in samples for cls, _, _ in s.objects)
    assert all(s.objects[0][0] == s.primary for s in samples)
    assert len({s.scene for s in samples}) == len(SCENES)
    assert sum(len(s.objects) > 1 for s in samples) > 10          # extra objects too, not only primaries
    # Its own stream: shift image i is not train image i.
    assert not np.array_equal(samples[0].image, render_image(0, size=32, seed=5).image)


# sha256 over (relative path, contents) of what generate(n_train=5, n_val=3, size=48, context_bias=0.85,
# seed=11) writes for train and val: label PNGs as decoded arrays (shape, then uint8 values), text files as
# bytes (pinned at dba2fb3). JPEG bytes depend on the libjpeg build, so the images are compared decoded,
# with and without a shift split, instead of pinned.
TRAIN_VAL_HASHES = {
    'SegmentationClass': 'ce2538064474d8f432978bb8908ec165db8d219e0980b26f5fa4998b134d2433',
    'SegmentationObject': '9df8ab1557ccd06c52129987cc184e4948973531124048783ff4c56e706382e3',
    'Annotations': '5cae53bc6792908456e534b781a99559dd4de84bdce88ab037ffd082c21621f9',
    'ImageSets': 'e7a3fa7fa91cf343a44b4cec2cfaf755855eaf3c8eb56dbc0c9c052f7f91cf93',   # the 66 list files
    'scenes.json': '4f2b6ac55abbe1868aba793f070f3d04ac41ae3d9b616ff6bef0ef5fe589cd25',
}


def _digest(root: Path, paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.relative_to(root).as_posix().encode())
        h.update(b'\0')
        if path.suffix == '.png':
            label = read_label_png(path)
            h.update(np.asarray(label.shape, np.int64).tobytes())
            h.update(label.tobytes())
        else:
            h.update(path.read_bytes())
    return h.hexdigest()


def _train_val_files(root: Path, sub: str) -> list[Path]:
    return sorted(p for p in (root / sub).rglob('*.*') if not p.name.startswith(SHIFT_ID_PREFIX)
                  and 'shift' not in p.name)


def _train_val_hashes(root: Path) -> dict[str, str]:
    found = {sub: _digest(root, _train_val_files(root, sub)) for sub in TRAIN_VAL_HASHES if sub != 'scenes.json'}
    found['scenes.json'] = _digest(root, [root / 'scenes.json'])
    return found


@pytest.mark.parametrize('n_shift', [0, 3])
def test_train_and_val_files_unchanged_by_the_shift_split(tmp_path: Path, n_shift: int) -> None:
    root = generate(tmp_path / 'voc', n_train=5, n_val=3, size=48, context_bias=0.85, seed=11, n_shift=n_shift)
    found = _train_val_hashes(root)
    if n_shift:
        # scenes.json gains the shift ids; without them it is the pinned file, byte for byte.
        scenes = json.loads((root / 'scenes.json').read_text())
        assert sum(i.startswith(SHIFT_ID_PREFIX) for i in scenes) == n_shift
        kept = {k: v for k, v in scenes.items() if not k.startswith(SHIFT_ID_PREFIX)}
        (tmp_path / 'kept').mkdir()
        (tmp_path / 'kept' / 'scenes.json').write_text(json.dumps(kept, indent=1) + '\n')
        found['scenes.json'] = _digest(tmp_path / 'kept', [tmp_path / 'kept' / 'scenes.json'])
        plain = generate(tmp_path / 'plain', n_train=5, n_val=3, size=48, context_bias=0.85, seed=11)
        images = _train_val_files(root, 'JPEGImages')
        assert [p.name for p in images] == [p.name for p in _train_val_files(plain, 'JPEGImages')]
        for path in images:
            assert np.array_equal(read_rgb(path), read_rgb(plain / 'JPEGImages' / path.name)), path.name
    assert found == TRAIN_VAL_HASHES


def test_shift_lists_follow_n_shift(tmp_path: Path) -> None:
    """Regenerating without a shift split drops its lists (the pipeline reads shift.txt to find it)."""
    root = generate(tmp_path / 'voc', n_train=3, n_val=1, size=32, seed=0, n_shift=2)
    assert read_ids(root, 'Segmentation', 'shift') == ['2008_000001', '2008_000002']
    shift_png = (root / 'SegmentationClass' / '2008_000002.png').read_bytes()
    generate(root, n_train=3, n_val=1, size=32, seed=0, n_shift=0)
    assert not (root / 'ImageSets' / 'Segmentation' / 'shift.txt').exists()
    assert not list((root / 'ImageSets' / 'Main').glob('*shift*'))
    generate(root, n_train=3, n_val=1, size=32, seed=0, n_shift=3)
    assert len(read_ids(root, 'Segmentation', 'shift')) == 3
    assert (root / 'SegmentationClass' / '2008_000002.png').read_bytes() == shift_png   # same image, same id


def test_old_dataset_without_shift_split_is_regenerated(tmp_path: Path) -> None:
    root = generate(tmp_path / 'voc', n_train=3, n_val=1, size=32, seed=0, n_shift=2)
    params = json.loads((root / 'synthetic.json').read_text())
    old = {k: v for k, v in params.items() if k != 'n_shift'}
    old['version'] = 1
    (root / 'synthetic.json').write_text(json.dumps(old))       # a marker of the previous generator
    (root / 'usual_scenes.json').unlink()
    (root / 'ImageSets' / 'Segmentation' / 'shift.txt').unlink()
    generate(root, n_train=3, n_val=1, size=32, seed=0, n_shift=2)
    assert (root / 'usual_scenes.json').is_file() and len(read_ids(root, 'Segmentation', 'shift')) == 2
    assert json.loads((root / 'synthetic.json').read_text()) == params


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    kwargs = dict(n_train=5, n_val=2, size=48)
    a = generate(tmp_path / 'a', seed=3, **kwargs)
    b = generate(tmp_path / 'b', seed=3, **kwargs)
    c = generate(tmp_path / 'c', seed=4, **kwargs)
    ids = read_ids(a, 'Segmentation', 'trainval')
    assert ids == read_ids(b, 'Segmentation', 'trainval') == read_ids(c, 'Segmentation', 'trainval')
    differs = False
    for image_id in ids:
        png = f'SegmentationClass/{image_id}.png'
        assert (a / png).read_bytes() == (b / png).read_bytes()
        jpg = f'JPEGImages/{image_id}.jpg'
        assert np.array_equal(np.asarray(Image.open(a / jpg)), np.asarray(Image.open(b / jpg)))
        xml = f'Annotations/{image_id}.xml'
        assert (a / xml).read_bytes() == (b / xml).read_bytes()
        differs |= (a / png).read_bytes() != (c / png).read_bytes()
    assert differs
    assert (a / 'scenes.json').read_text() == (b / 'scenes.json').read_text()


def test_image_does_not_depend_on_dataset_length() -> None:
    """Image i comes from its own generator: the same whatever n_train is (and however it is split)."""
    first = render_image(5, size=48, context_bias=0.5, seed=1)
    again = render_image(5, size=48, context_bias=0.5, seed=1)
    assert np.array_equal(first.image, again.image) and np.array_equal(first.label, again.label)


def test_reuses_a_complete_dataset_and_regenerates_on_new_parameters(tmp_path: Path) -> None:
    root = generate(tmp_path / 'voc', n_train=3, n_val=1, size=32, seed=0)
    png = root / 'SegmentationClass' / '2007_000001.png'
    stamp = png.stat().st_mtime_ns
    assert generate(root, n_train=3, n_val=1, size=32, seed=0) == root
    assert png.stat().st_mtime_ns == stamp  # nothing rewritten
    generate(root, n_train=3, n_val=1, size=40, seed=0)
    assert np.asarray(Image.open(png)).shape == (40, 40)
    assert json.loads((root / 'synthetic.json').read_text())['size'] == 40


def test_context_bias_one_puts_every_primary_in_its_usual_scene(tmp_path: Path) -> None:
    root = generate(tmp_path / 'biased', n_train=30, n_val=0, size=40, context_bias=1.0, seed=2)
    scenes = json.loads((root / 'scenes.json').read_text())
    for image_id, scene in scenes.items():
        # The primary class is the first <object> of the annotation.
        primary_name = read_objects(root / 'Annotations' / f'{image_id}.xml')[0][0]
        assert USUAL_SCENE[CAT_NAME_TO_NUM[primary_name]] == scene, image_id


def test_context_bias_zero_mixes_scenes() -> None:
    samples = [render_image(i, size=32, context_bias=0.0, seed=0) for i in range(60)]
    usual = sum(USUAL_SCENE[s.primary] == s.scene for s in samples)
    assert usual < 30  # about 1/6 expected when scenes are drawn uniformly
    assert len({s.scene for s in samples}) == len(SCENES)
    assert all(s.objects[0][0] == s.primary for s in samples)


def test_usual_scene_covers_every_class() -> None:
    assert sorted(USUAL_SCENE) == list(range(20))
    assert set(USUAL_SCENE.values()) == set(SCENES)


@pytest.mark.parametrize('scene', SCENES)
def test_render_scene(scene: str) -> None:
    image = render_scene(scene, 40, np.random.default_rng(0))
    assert image.shape == (40, 40, 3) and image.dtype == np.uint8
    assert np.array_equal(image, render_scene(scene, 40, np.random.default_rng(0)))


def test_render_scene_rejects_unknown_name() -> None:
    with pytest.raises(ValueError, match='unknown scene'):
        render_scene('space', 32, np.random.default_rng(0))


def test_object_sizes_are_in_range() -> None:
    """The primary object covers roughly 5%-45% of the image (less only when truncated or occluded)."""
    fractions = []
    for i in range(40):
        sample = render_image(i, size=64, seed=0)
        fractions.append(((sample.label == sample.primary + 1).sum()) / 64 ** 2)
    fractions = np.array(fractions)
    assert fractions.max() <= 0.5
    assert np.median(fractions) >= 0.08


@pytest.mark.parametrize('kwargs', [dict(n_train=0, n_val=0), dict(size=8), dict(context_bias=1.5),
                                    dict(seed=-1)])
def test_rejects_bad_parameters(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        generate(tmp_path / 'bad', **kwargs)


def test_cli_writes_the_layout(tmp_path: Path) -> None:
    out = tmp_path / 'cli'
    result = subprocess.run(
        [sys.executable, '-m', 'voc12.synthetic', '--out', str(out), '--n_train', '4', '--n_val', '2',
         '--size', '32', '--context_bias', '0.5', '--seed', '7'],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert_layout(out, 4, 2)
    params = json.loads((out / 'synthetic.json').read_text())
    assert params['n_train'] == 4 and params['n_val'] == 2 and params['size'] == 32
    assert params['context_bias'] == 0.5 and params['seed'] == 7
    # Same parameters through the API: identical data (the CLI is only a front end).
    api = generate(tmp_path / 'api', n_train=4, n_val=2, size=32, context_bias=0.5, seed=7)
    png = 'SegmentationClass/2007_000006.png'
    assert (out / png).read_bytes() == (api / png).read_bytes()


def test_cli_rejects_bad_flag(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, '-m', 'voc12.synthetic', '--out', str(tmp_path / 'x'),
                             '--context_bias', '2'], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and '--context_bias' in result.stderr.strip().splitlines()[-1]
