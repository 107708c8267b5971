"""Augmentation presets (PIL + numpy, seeded by torch) and test-time augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from sktransfer import PretrainedImageClassifier
from sktransfer.inputs.augment import RandomResizedCrop, make_augment, tta_views
from sktransfer.inputs.preprocessing import ImagePreprocessing


def _image(seed=0, size=(20, 14)):
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 255, size[::-1] + (3,), dtype=np.uint8))


def _arr(img):
    return np.asarray(img, dtype=np.int16)


@pytest.mark.parametrize("preset", ["light", "standard"])
def test_presets_are_seeded_by_torch_and_sized_for_the_backbone(preset):
    prep = ImagePreprocessing(image_size=12, resize_size=16)
    aug = make_augment(preset, prep)
    img = _image()
    torch.manual_seed(0)
    a = [_arr(aug(img)) for _ in range(5)]
    torch.manual_seed(0)
    b = [_arr(aug(img)) for _ in range(5)]
    for x, z in zip(a, b):
        np.testing.assert_array_equal(x, z)
    assert all(x.shape == (16, 16, 3) for x in a)  # resize_size: the centre crop stays usual
    assert any(not np.array_equal(a[0], x) for x in a[1:])  # random between calls


def test_random_resized_crop_respects_the_scale_range():
    crop = RandomResizedCrop(8, scale=(0.8, 1.0))
    torch.manual_seed(0)
    areas = []
    for _ in range(200):
        left, top, right, bottom = crop.box(40, 30)
        assert 0 <= left < right <= 40 and 0 <= top < bottom <= 30
        areas.append((right - left) * (bottom - top) / (40 * 30))
    assert min(areas) >= 0.75 and max(areas) <= 1.0


def test_standard_jitters_colour_and_light_does_not():
    flat = Image.new("RGB", (16, 16), (120, 80, 40))  # crops and flips cannot change it
    prep = ImagePreprocessing(image_size=16)
    torch.manual_seed(0)
    light = {tuple(_arr(make_augment("light", prep)(flat))[0, 0]) for _ in range(10)}
    std = {tuple(_arr(make_augment("standard", prep)(flat))[0, 0]) for _ in range(10)}
    assert light == {(120, 80, 40)} and len(std) > 5


def test_tta_views_are_deterministic_flips_and_corner_crops():
    img = _image(1)
    views = tta_views(6)
    assert len(views) == 6 and tta_views(0) == []
    np.testing.assert_array_equal(_arr(views[0](img)), _arr(ImageOps.mirror(img)))
    for v in views[1:]:
        out = v(img)
        assert out.size == img.size
        np.testing.assert_array_equal(_arr(out), _arr(v(img)))
    corners = {repr(v) for v in views[1:5]}
    assert len(corners) == 4 and views[5].flip


def test_augmentation_is_applied_to_every_training_image_each_epoch(cnn, digits_small):
    X, y = digits_small
    seen = []

    def spy(img):
        seen.append(img.size)
        return img

    clf = PretrainedImageClassifier(
        cnn, image_size=8, freeze_depth=2, max_epochs=2, augment=spy, random_state=0,
        batch_size=64, lr=1e-3,
    ).fit(X, y)  # fmt: skip
    assert len(seen) == 2 * len(y)  # every image, every epoch (no cache)
    seen.clear()
    clf.set_params(early_stopping=True).fit(X, y)
    n_train = len(y) - int(round(0.1 * len(y)))
    assert len(seen) == 2 * n_train  # training images only, not the validation split
    seen.clear()
    clf.predict(X)
    assert seen == []  # never at prediction time


def test_tta_averages_the_flipped_view(cnn, digits_small):
    X, y = digits_small
    clf = PretrainedImageClassifier(cnn, image_size=8, random_state=0).fit(X, y)
    plain = clf.predict_proba(X)
    clf.set_params(tta=1)
    tta = clf.predict_proba(X)
    np.testing.assert_allclose(tta.sum(axis=1), 1.0)
    mirrored = clf.set_params(tta=0).predict_proba(np.ascontiguousarray(X[:, :, ::-1]))
    np.testing.assert_allclose(tta, (plain + mirrored) / 2, atol=1e-6)
    assert not np.allclose(tta, plain)
    clf.set_params(tta=4)
    np.testing.assert_array_equal(clf.predict_proba(X), clf.predict_proba(X))
    assert np.array_equal(clf.predict(X), clf.classes_[clf.predict_proba(X).argmax(1)])


def test_user_augment_drawing_from_numpy_and_random_is_seeded(cnn, digits_small):
    import random

    X, y = digits_small

    def noisy(img):  # a user callable using the global numpy / random generators
        a = np.asarray(img).astype(np.int16) + np.random.randint(-20, 20, size=(1, 1, 3))
        a = np.clip(a, 0, 255).astype(np.uint8)
        return ImageOps.mirror(Image.fromarray(a)) if random.random() < 0.5 else img

    def fit():
        return PretrainedImageClassifier(
            cnn, image_size=8, freeze_depth=1, max_epochs=1, augment=noisy, random_state=0,
            batch_size=64, lr=1e-2,
        ).fit(X, y)  # fmt: skip

    state = np.random.get_state()[1].copy()
    a, b = fit().predict_proba(X), fit().predict_proba(X)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # the user's RNG restored
