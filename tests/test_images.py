"""One image-folder reader: calibration sets and training data read a folder the same way (real photos)."""

from __future__ import annotations

import numpy as np
import pytest

from edgecompress.calib.sources import open_source
from edgecompress.compress.sources import load_labelled_data
from edgecompress.core.errors import TrainingDataError
from edgecompress.device.preprocess import PreprocessSpec
from edgecompress.source.images import list_image_folder, read_image
from tests.calib_fixtures import COLOUR_PHOTOS, GRAY_PHOTOS, write_photo_folder

SPEC = PreprocessSpec(resize=(16, 16), color="rgb")


@pytest.fixture
def photos(tmp_path):
    root = write_photo_folder(tmp_path / "photos", {"colour": COLOUR_PHOTOS, "gray": GRAY_PHOTOS})
    (root / ".hidden").mkdir()
    write_photo_folder(root / ".hidden", {"x": ("camera",)})
    return root


def test_the_folder_lists_every_photo_labelled_by_its_class_folder_and_skips_hidden_ones(photos):
    images = list_image_folder(photos)
    assert len(images) == len(COLOUR_PHOTOS) + len(GRAY_PHOTOS)
    assert {image.label for image in images} == {"colour", "gray"}
    assert all(image.path.parent.name == image.label for image in images)


def test_calibration_and_training_decode_the_same_arrays(photos):
    source = open_source(str(photos), SPEC)
    calibration = {c.key: c.decode().inputs["x"] for c in source.candidates}
    splits = load_labelled_data(str(photos), SPEC, seed=0)
    x = np.concatenate([part.x for part in (splits.train, splits.val, splits.test)])
    assert len(x) == len(calibration)
    for image in list_image_folder(photos):
        array, _ = read_image(image.path, SPEC)
        np.testing.assert_array_equal(array, calibration[str(image.path)])
        assert any(np.array_equal(array, row) for row in x)


def test_training_labels_are_class_indices_in_folder_order(photos):
    splits = load_labelled_data(str(photos), SPEC, seed=0)
    labels = np.concatenate([part.y for part in (splits.train, splits.val, splits.test)])
    assert sorted(set(labels.tolist())) == [0, 1]
    assert np.bincount(labels).tolist() == [len(COLOUR_PHOTOS), len(GRAY_PHOTOS)]


def test_a_corrupt_training_image_names_the_file(photos):
    (photos / "gray" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(TrainingDataError, match="broken.png"):
        load_labelled_data(str(photos), SPEC, seed=0)
