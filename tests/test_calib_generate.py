"""Calibration sets from image folders, arrays and the digits: sampling, manifest and bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgecompress.calib.generate import CalibRecipe, generate, load_recipe, make_calibration_set, stratified_order
from edgecompress.calib.manifest import arrays_sha256
from edgecompress.core.errors import CalibrationError, ConfigError
from tests.calib_fixtures import COLOUR_PHOTOS, GRAY_PHOTOS, photo, write_photo_folder

SMALL = {"resize": 32, "center_crop": 32}


@pytest.fixture
def photo_folder(tmp_path):
    return write_photo_folder(tmp_path / "photos", {"indoor": COLOUR_PHOTOS[:3], "outdoor": COLOUR_PHOTOS[3:]})


def test_image_folder_gives_fixed_size_nchw_set_with_class_counts(photo_folder, tmp_path):
    made = make_calibration_set(
        CalibRecipe(source=str(photo_folder), count=4, preprocess=SMALL), tmp_path / "set.npz"
    )
    with np.load(tmp_path / "set.npz") as archive:
        assert archive["x"].shape == (4, 3, 32, 32)
        assert arrays_sha256({"x": archive["x"]}) == made.sha256
    manifest = json.loads((tmp_path / "set.json").read_text())
    assert manifest["per_class_counts"] == {"indoor": 2, "outdoor": 2}
    assert manifest["source"]["kind"] == "images" and manifest["source"]["candidates"] == 6
    assert manifest["preprocess"]["resize"] == 32 and manifest["seed"] == 0
    assert len(manifest["channel_stats"]["x"]["mean"]) == 3
    assert manifest["tool"]["name"] == "edgecompress" and manifest["sha256"] == made.sha256


def test_images_are_found_recursively_and_png_counts(tmp_path):
    root = tmp_path / "photos"
    write_photo_folder(root / "cats" / "2024", {"a": ("chelsea",)}, suffix=".png")
    write_photo_folder(root / "rockets", {"b": ("rocket",)}, suffix=".jpeg")
    made = generate(CalibRecipe(source=str(root), count=2, preprocess=SMALL))
    assert made.manifest["per_class_counts"] == {"cats": 1, "rockets": 1}


def test_same_recipe_gives_same_arrays_and_another_seed_another_draw(photo_folder):
    recipe = CalibRecipe(source=str(photo_folder), count=3, preprocess=SMALL)
    assert generate(recipe).sha256 == generate(recipe).sha256
    assert generate(recipe.model_copy(update={"seed": 1})).sha256 != generate(recipe).sha256


def test_stratified_order_keeps_every_prefix_proportional():
    labels = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    order = stratified_order(labels, seed=3)
    assert sorted(order) == list(range(100))
    prefix = [labels[i] for i in order[:20]]
    assert abs(prefix.count("a") - 12) <= 1 and abs(prefix.count("b") - 6) <= 1 and abs(prefix.count("c") - 2) <= 1


def test_exact_duplicate_images_are_removed(photo_folder):
    shutil.copy(photo_folder / "indoor" / "astronaut.jpg", photo_folder / "indoor" / "astronaut-copy.jpg")
    made = generate(CalibRecipe(source=str(photo_folder), count=6, preprocess=SMALL))
    assert made.manifest["source"]["duplicates_removed"] == 1
    assert len(made.arrays["x"]) == 6


def test_truncated_and_unreadable_images_are_skipped_and_counted(photo_folder):
    data = (photo_folder / "indoor" / "coffee.jpg").read_bytes()
    (photo_folder / "indoor" / "coffee.jpg").write_bytes(data[: len(data) // 3])
    (photo_folder / "outdoor" / "notes.png").write_text("not an image")
    # seed 1's fixed order reaches both broken files before the fifth readable one
    made = generate(CalibRecipe(source=str(photo_folder), count=5, seed=1, preprocess=SMALL))
    assert made.manifest["source"]["unreadable_skipped"] == 2
    assert len(made.arrays["x"]) == 5


def test_folder_where_nothing_is_readable_fails(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (tmp_path / "b.png").write_text("nope")
    with pytest.raises(CalibrationError, match="none of the 2 samples"):
        generate(CalibRecipe(source=str(tmp_path), count=1, preprocess=SMALL))


def test_empty_folder_fails_with_a_clear_error(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(CalibrationError, match="no JPEG/PNG images"):
        generate(CalibRecipe(source=str(tmp_path), count=1))


def test_missing_source_fails(tmp_path):
    with pytest.raises(CalibrationError, match="does not exist"):
        generate(CalibRecipe(source=str(tmp_path / "nowhere"), count=1))


def test_mixed_gray_and_rgb_are_converted_and_recorded(tmp_path):
    write_photo_folder(tmp_path, {"rgb": COLOUR_PHOTOS[:2], "gray": GRAY_PHOTOS[:2]})
    made = generate(CalibRecipe(source=str(tmp_path), count=4, preprocess=SMALL))
    assert made.arrays["x"].shape == (4, 3, 32, 32)
    assert made.manifest["source"]["conversions"] == {"grayscale converted to RGB": 2}


def test_count_larger_than_source_says_how_many_exist(photo_folder, tmp_path):
    with pytest.raises(CalibrationError, match="has only 6 samples") as caught:
        make_calibration_set(CalibRecipe(source=str(photo_folder), count=50, preprocess=SMALL), tmp_path / "s.npz")
    assert "--count 6" in caught.value.fix
    assert not list(tmp_path.glob("s.*"))


def test_count_larger_than_usable_samples_after_skips_fails(photo_folder):
    (photo_folder / "indoor" / "coffee.jpg").write_bytes(b"broken")
    with pytest.raises(CalibrationError, match="only 5 usable samples"):
        generate(CalibRecipe(source=str(photo_folder), count=6, preprocess=SMALL))


def test_images_of_different_sizes_without_a_size_fail_with_the_fix(photo_folder):
    with pytest.raises(CalibrationError, match="different shapes") as caught:
        generate(CalibRecipe(source=str(photo_folder), count=6))
    assert "--size" in caught.value.fix


def test_float_npy_arrays_are_used_as_given(tmp_path):
    x = np.random.default_rng(0).standard_normal((20, 2, 4, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    made = generate(CalibRecipe(source=str(tmp_path / "x.npy"), count=20))
    assert made.manifest["preprocess"] is None
    assert sorted(map(tuple, made.arrays["x"].reshape(20, -1))) == sorted(map(tuple, x.reshape(20, -1)))


def test_npz_with_labels_is_stratified_and_keeps_input_names(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "d.npz",
        image=rng.random((40, 3, 4, 4), dtype=np.float32),
        meta=rng.random((40, 5), dtype=np.float32),
        labels=np.repeat([0, 1, 2, 3], 10),
    )
    made = generate(CalibRecipe(source=str(tmp_path / "d.npz"), count=8))
    assert set(made.arrays) == {"image", "meta"} and len(made.arrays["meta"]) == 8
    assert made.manifest["per_class_counts"] == {"0": 2, "1": 2, "2": 2, "3": 2}


def test_uint8_arrays_are_images_and_get_the_spec(tmp_path):
    images = np.stack([np.asarray(photo(name).resize((40, 40))) for name in COLOUR_PHOTOS])
    np.save(tmp_path / "images.npy", images)
    made = generate(CalibRecipe(source=str(tmp_path / "images.npy"), count=6, preprocess=SMALL))
    assert made.arrays["x"].shape == (6, 3, 32, 32) and made.arrays["x"].max() <= 1.0


def test_nan_or_inf_arrays_are_rejected(tmp_path):
    x = np.zeros((10, 4), np.float32)
    x[3, 1] = np.nan
    x[7, 0] = np.inf
    np.save(tmp_path / "bad.npy", x)
    with pytest.raises(CalibrationError, match="NaN/Inf in 2 of 10 samples"):
        generate(CalibRecipe(source=str(tmp_path / "bad.npy"), count=4))


def test_digits_come_from_the_training_split_stratified():
    from edgecompress.source.data import digits_split_indices, digits_splits

    made = generate(CalibRecipe(source="digits", count=50))
    assert made.arrays["x"].shape == (50, 1, 32, 32)
    assert made.manifest["source"]["candidates"] == len(digits_split_indices().train)
    assert set(made.manifest["per_class_counts"].values()) == {5}
    test_rows = {row.tobytes() for row in digits_splits().test.x}
    assert not any(row.tobytes() in test_rows for row in made.arrays["x"])


def test_out_path_must_be_npz_and_nothing_is_written(tmp_path):
    with pytest.raises(CalibrationError, match="must end with .npz"):
        make_calibration_set(CalibRecipe(source="digits", count=4), tmp_path / "set.bin")
    assert not list(tmp_path.iterdir())


def test_recipe_toml_resolves_source_beside_it_and_rejects_unknown_keys(photo_folder, tmp_path):
    (tmp_path / "r.toml").write_text('source = "photos"\ncount = 2\n[preprocess]\nresize = 32\ncenter_crop = 32\n')
    assert generate(load_recipe(tmp_path / "r.toml")).arrays["x"].shape == (2, 3, 32, 32)
    (tmp_path / "bad.toml").write_text('source = "digits"\ncuont = 2\n')
    with pytest.raises(ConfigError, match="cuont"):
        load_recipe(tmp_path / "bad.toml")
