"""Tests for sktransfer.data: input validation, decoding, datasets, collate, keys."""

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from sktransfer.data import (
    ImageDataset,
    TextDataset,
    check_images,
    check_texts,
    load_image_folder,
    load_rgb,
    make_text_collate,
    preprocess_image,
    sample_keys,
)
from sktransfer.inputs.preprocessing import ImagePreprocessing, TextPreprocessing

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _save(img, path):
    img.save(path)
    return str(path)


def _rgb_array(img):
    assert img.mode == "RGB"
    return np.asarray(img).astype(int)


# --------------------------------------------------------------------------- check_images


def test_check_images_paths_pil_arrays_mixed(tmp_path):
    p1 = _save(Image.new("RGB", (10, 7), "red"), tmp_path / "a.png")
    p2 = tmp_path / "b.jpg"
    Image.new("L", (33, 20), 128).save(p2)
    pil = Image.new("RGBA", (5, 9))
    arr = np.zeros((4, 6, 3), dtype=np.uint8)
    farr = np.full((3, 3), 0.5, dtype=np.float32)
    items = check_images([p1, p2, pil, arr, farr])
    assert items[0] == p1 and items[1] == str(p2)
    assert all(type(p) is str for p in items[:2])
    assert items[2] is pil and items[3] is arr and items[4] is farr
    # tuple, object array, pandas Series and a single-column DataFrame
    assert check_images((p1, p2)) == [p1, str(p2)]
    obj = np.empty(2, dtype=object)
    obj[0], obj[1] = p1, arr
    assert check_images(obj)[0] == p1
    assert check_images(pd.Series([p1, str(p2)])) == [p1, str(p2)]
    assert check_images(pd.DataFrame({"img": [p1]})) == [p1]
    assert check_images(np.array([p1, str(p2)])) == [p1, str(p2)]


def test_check_images_numeric_batch_is_split_into_views():
    X = np.random.default_rng(0).integers(0, 256, size=(5, 8, 9, 3), dtype=np.uint8)
    items = check_images(X)
    assert len(items) == 5
    assert all(it.shape == (8, 9, 3) for it in items)
    assert all(np.shares_memory(it, X) for it in items)
    gray = np.random.default_rng(0).random((4, 6, 6))
    items = check_images(gray)
    assert len(items) == 4 and items[0].shape == (6, 6)
    assert np.shares_memory(items[0], gray)


@pytest.mark.parametrize("X", [[], (), np.zeros((0, 4, 4)), pd.Series([], dtype=object)])
def test_check_images_empty(X):
    with pytest.raises(ValueError, match="empty"):
        check_images(X)


def test_check_images_plain_string_is_type_error(tmp_path):
    p = _save(Image.new("RGB", (4, 4)), tmp_path / "a.png")
    with pytest.raises(TypeError, match="list"):
        check_images(p)
    with pytest.raises(TypeError, match="list"):
        check_images(Path(p))


def test_check_images_missing_path_and_directory(tmp_path):
    good = _save(Image.new("RGB", (4, 4)), tmp_path / "a.png")
    missing = str(tmp_path / "nope.png")
    with pytest.raises(ValueError) as exc:
        check_images([good, good, missing])
    assert "2" in str(exc.value) and missing in str(exc.value)
    with pytest.raises(ValueError, match="not a file") as exc:
        check_images([str(tmp_path)])
    assert "0" in str(exc.value)


@pytest.mark.parametrize("bad", [3, None, b"a.png", [1, 2, 3], torch.zeros(3, 4, 4)])
def test_check_images_bad_type_names_index_and_type(bad):
    X = [np.zeros((4, 4), np.uint8), bad]
    with pytest.raises(TypeError) as exc:
        check_images(X)
    msg = str(exc.value)
    assert "Sample 1" in msg and type(bad).__name__ in msg


def test_check_images_float_range_and_nonfinite():
    ok = np.zeros((4, 4, 3), np.float32)
    with pytest.raises(ValueError, match=r"Sample 1.*\[0, 1\]"):
        check_images([ok, ok + 2.0])
    nan = ok.copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="Sample 2.*NaN"):
        check_images([ok, ok, nan])
    inf = ok.copy()
    inf[1, 1, 1] = np.inf
    with pytest.raises(ValueError, match="Sample 0"):
        check_images([inf])
    batch = np.zeros((6, 4, 4), np.float64)
    batch[4, 0, 0] = 255.0
    with pytest.raises(ValueError, match="Sample 4"):
        check_images(batch)
    batch[4, 0, 0] = np.nan
    with pytest.raises(ValueError, match="Sample 4.*NaN"):
        check_images(batch)


def test_check_images_bad_shape_channels_dtype():
    with pytest.raises(ValueError, match="Sample 1.*shape"):
        check_images([np.zeros((4, 4), np.uint8), np.zeros(16, np.uint8)])
    with pytest.raises(ValueError, match="Sample 0.*channels"):
        check_images([np.zeros((4, 4, 2), np.uint8)])
    with pytest.raises(ValueError, match="channels-first"):
        check_images(np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        check_images(np.zeros((2, 3, 8, 8, 3), np.uint8))
    with pytest.raises(TypeError, match="Sample 1.*int64"):
        check_images([np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.int64)])


# --------------------------------------------------------------------------- load_rgb


def test_load_rgb_all_modes(tmp_path):
    # L, 1
    assert (
        _rgb_array(load_rgb(_save(Image.new("L", (4, 4), 77), tmp_path / "l.png")))[0, 0].tolist()
        == [77] * 3
    )
    one = load_rgb(_save(Image.new("1", (4, 4), 1), tmp_path / "one.png"))
    assert _rgb_array(one)[0, 0].tolist() == [255] * 3
    # LA: half-transparent black on white -> mid grey
    la = Image.new("LA", (4, 4), (0, 128))
    v = _rgb_array(load_rgb(_save(la, tmp_path / "la.png")))[0, 0]
    assert np.all(np.abs(v - 127) <= 2)
    # RGBA: fully transparent red -> white, opaque red -> red
    rgba = Image.new("RGBA", (4, 2), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    out = _rgb_array(load_rgb(_save(rgba, tmp_path / "rgba.png")))
    assert out[1, 3].tolist() == [255, 255, 255]
    assert out[0, 0].tolist() == [255, 0, 0]
    # P with a transparent palette index -> white
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 255] + [0, 255, 0] + [0, 0, 0] * 254)
    p.putpixel((0, 0), 0)
    p.info["transparency"] = 1
    path = _save(p, tmp_path / "p.png")
    with Image.open(path) as chk:
        assert chk.mode == "P" and "transparency" in chk.info
    out = _rgb_array(load_rgb(path))
    assert out[0, 0].tolist() == [0, 0, 255] and out[2, 2].tolist() == [255, 255, 255]
    # P without transparency (GIF)
    gif = Image.new("RGB", (4, 4), (0, 255, 0)).convert("P")
    assert _rgb_array(load_rgb(_save(gif, tmp_path / "g.gif")))[0, 0].tolist() == [
        0,
        255,
        0,
    ]
    # CMYK as JPEG and TIFF: pure cyan
    for ext in ("jpg", "tif"):
        cmyk = _save(Image.new("CMYK", (8, 8), (255, 0, 0, 0)), tmp_path / f"c.{ext}")
        with Image.open(cmyk) as chk:
            assert chk.mode == "CMYK"
        v = _rgb_array(load_rgb(cmyk))[4, 4]
        assert v[0] < 20 and v[1] > 235 and v[2] > 235


def test_load_rgb_16bit_png_is_scaled_not_clipped(tmp_path):
    a = np.linspace(0, 65535, 64 * 16).reshape(16, 64).round().astype(np.uint16)
    path = _save(Image.fromarray(a), tmp_path / "deep.png")
    with Image.open(path) as chk:
        assert chk.mode.startswith("I;16")
    out = _rgb_array(load_rgb(path))
    assert out.min() <= 2 and out.max() >= 253
    # monotone and spread out (clipping would saturate almost everything at 255)
    assert len(np.unique(out[..., 0])) > 200
    assert np.mean(out == 255) < 0.05
    # in-memory big-endian 16-bit and the array interface agree
    big = Image.frombytes("I;16B", (64, 16), a.astype(">u2").tobytes())
    assert np.array_equal(_rgb_array(load_rgb(big)), out)


def test_load_rgb_32bit_int_and_float(tmp_path):
    a = np.arange(100, dtype=np.int32).reshape(10, 10) * 1000 - 5000
    out = _rgb_array(load_rgb(Image.fromarray(a, mode="I")))
    assert out.min() == 0 and out.max() == 255
    f = Image.fromarray(np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10), mode="F")
    out = _rgb_array(load_rgb(f))
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    path = _save(Image.fromarray(a, mode="I"), tmp_path / "i32.tif")
    assert _rgb_array(load_rgb(path)).max() == 255


def test_load_rgb_arrays():
    g = np.full((3, 5), 200, np.uint8)
    assert _rgb_array(load_rgb(g)).shape == (3, 5, 3)
    assert _rgb_array(load_rgb(g[..., None]))[0, 0].tolist() == [200] * 3
    f = np.zeros((2, 2, 3), np.float64)
    f[..., 1] = 1.0
    assert _rgb_array(load_rgb(f))[0, 0].tolist() == [0, 255, 0]
    rgba = np.zeros((2, 2, 4), np.uint8)  # transparent black -> white
    assert _rgb_array(load_rgb(rgba))[0, 0].tolist() == [255] * 3
    # non-contiguous view works
    big = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
    assert np.array_equal(_rgb_array(load_rgb(big[:, ::2])), big[:, ::2])


def test_load_rgb_corrupt_file_names_index_and_path(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(np.random.default_rng(0).bytes(512))
    with pytest.raises(ValueError) as exc:
        load_rgb(str(bad), index=7)
    assert "7" in str(exc.value) and str(bad) in str(exc.value)
    # truncated PNG: header ok, data cut
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="cut.png"):
        load_rgb(str(cut), index=0)


def test_load_rgb_closes_file_handles(tmp_path):
    path = _save(Image.new("RGB", (4, 4), "blue"), tmp_path / "a.png")
    fd_dir = "/proc/self/fd"
    if not os.path.isdir(fd_dir):
        pytest.skip("no /proc")
    before = len(os.listdir(fd_dir))
    imgs = [load_rgb(path) for _ in range(50)]
    assert len(os.listdir(fd_dir)) <= before + 1
    assert imgs[-1].getpixel((0, 0)) == (0, 0, 255)


# --------------------------------------------------------------------------- preprocess / dataset


def test_preprocess_white_image_normalisation():
    prep = ImagePreprocessing(image_size=16, mean=MEAN, std=STD)
    t = preprocess_image(Image.new("RGB", (40, 25), "white"), prep)
    assert t.shape == (3, 16, 16) and t.dtype == torch.float32
    expected = (1 - np.array(MEAN)) / np.array(STD)
    assert np.allclose(t.mean(dim=(1, 2)).numpy(), expected, atol=1e-5)
    assert np.allclose(t.std(dim=(1, 2)).numpy(), 0, atol=1e-5)


def test_preprocess_resize_shorter_side_then_centre_crop():
    # left half black, right half white, wide image: the crop keeps the centre
    a = np.zeros((20, 60), np.uint8)
    a[:, 30:] = 255
    prep = ImagePreprocessing(image_size=10, mean=(0, 0, 0), std=(1, 1, 1), interpolation="nearest")
    t = preprocess_image(Image.fromarray(a).convert("RGB"), prep)
    assert t.shape == (3, 10, 10)
    assert torch.all(t[:, :, :5] == 0) and torch.all(t[:, :, 5:] == 1)
    # resize_size > image_size crops a central region of the resized image
    prep2 = ImagePreprocessing(image_size=8, resize_size=12, mean=(0, 0, 0), std=(1, 1, 1))
    assert preprocess_image(Image.new("RGB", (30, 50), "white"), prep2).shape == (
        3,
        8,
        8,
    )
    for interp in ("bilinear", "bicubic", "nearest"):
        p = ImagePreprocessing(image_size=8, interpolation=interp)
        assert preprocess_image(Image.new("L", (9, 13)), p).shape == (3, 8, 8)
    with pytest.raises(ValueError, match="interpolation"):
        preprocess_image(Image.new("RGB", (9, 9)), ImagePreprocessing(interpolation="cubicle"))


def test_image_dataset_lazy_shapes_targets_and_pickle(tmp_path):
    paths = [
        _save(Image.new("RGB", (30 + 7 * i, 20 + 3 * i), "white"), tmp_path / f"{i}.png")
        for i in range(3)
    ]
    items = check_images(paths + [np.zeros((5, 5), np.uint8)])
    prep = ImagePreprocessing(image_size=12)
    y = np.array([3, 1, 2, 0], dtype=np.int64)
    ds = ImageDataset(items, prep, y=y)
    assert len(ds) == 4
    assert all(isinstance(it, str) for it in ds.items[:3])  # paths kept, not pixels
    x, target = ds[1]
    assert x.shape == (3, 12, 12) and x.dtype == torch.float32
    assert target == 1 and isinstance(target, np.int64)
    expected = (1 - np.array(MEAN)) / np.array(STD)
    assert np.allclose(x[:, 6, 6].numpy(), expected, atol=1e-5)
    assert ImageDataset(items, prep)[3][1] == 0
    ds2 = pickle.loads(pickle.dumps(ds))
    assert torch.equal(ds2[0][0], ds[0][0])
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    xb, yb = next(iter(loader))
    assert xb.shape == (4, 3, 12, 12) and yb.dtype == torch.int64
    with pytest.raises(ValueError, match="y has 2"):
        ImageDataset(items, prep, y=[0, 1])


def test_image_dataset_transform_hook_and_pandas_y(tmp_path):
    from PIL import ImageOps

    items = check_images([np.zeros((8, 8, 3), np.uint8)])
    prep = ImagePreprocessing(image_size=8, mean=(0, 0, 0), std=(1, 1, 1))
    ds = ImageDataset(items, prep, y=pd.Series(["cat"], index=[10]), transform=ImageOps.invert)
    x, target = ds[0]
    assert torch.allclose(x, torch.ones(3, 8, 8)) and target == "cat"


def _mixed_images():
    rng = np.random.default_rng(0)
    return [
        rng.integers(0, 256, (37, 23, 3), dtype=np.uint8),
        rng.random((19, 41)),  # float grey in [0, 1]
        rng.integers(0, 256, (16, 16, 4), dtype=np.uint8),  # alpha
        rng.integers(0, 256, (50, 50, 3), dtype=np.uint8),
    ]


@pytest.mark.parametrize("channels_last", [False, True])
def test_uint8_pixels_normalised_on_the_device_equal_the_float_path(channels_last):
    """uint8 batches + normalisation after the device copy give bit-identical input."""
    from sktransfer.inputs.pixels import PixelBatch, StackPixels
    from sktransfer.runtime.batches import Collate
    from sktransfer.runtime.device import to_device

    prep = ImagePreprocessing(image_size=16, resize_size=18, mean=MEAN, std=STD)
    items = check_images(_mixed_images())
    raw = ImageDataset(items, prep, normalize=False)
    assert raw[0][0].dtype == torch.uint8 and raw[0][0].shape == (3, 16, 16)
    floats = torch.stack([ImageDataset(items, prep)[i][0] for i in range(len(items))])
    batch = Collate(StackPixels(prep.mean, prep.std))([raw[i] for i in range(len(items))])[0]
    assert isinstance(batch, PixelBatch) and len(batch) == 4
    assert batch.pixels.dtype == torch.uint8
    x = to_device(batch, "cpu", channels_last)
    assert x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert torch.equal(x, floats)
    # the statistics are applied per channel: a shuffled std is another input
    wrong = PixelBatch(batch.pixels, MEAN, STD[::-1])
    assert not torch.allclose(to_device(wrong, "cpu"), floats)


def test_pixel_batches_come_through_worker_processes_and_pickle():
    from sktransfer.inputs.pixels import PixelBatch, StackPixels
    from sktransfer.runtime.batches import Collate
    from sktransfer.runtime.device import to_device

    prep = ImagePreprocessing(image_size=12)
    items = check_images(_mixed_images())
    raw = ImageDataset(items, prep, y=[0, 1, 0, 1], normalize=False)
    loader = torch.utils.data.DataLoader(
        raw, batch_size=3, num_workers=1, collate_fn=Collate(StackPixels(prep.mean, prep.std))
    )
    batches = list(loader)
    assert [len(b[0]) for b in batches] == [3, 1]
    assert all(isinstance(b[0], PixelBatch) for b in batches)
    x = torch.cat([to_device(b[0], "cpu") for b in batches])
    assert torch.equal(x, torch.stack([ImageDataset(items, prep)[i][0] for i in range(4)]))
    again = pickle.loads(pickle.dumps(batches[0][0]))
    assert torch.equal(again.pixels, batches[0][0].pixels) and again.std == batches[0][0].std
    # float samples (already normalised) are stacked as they are
    floats = StackPixels(prep.mean, prep.std)([ImageDataset(items, prep)[0]])[0]
    assert isinstance(floats, torch.Tensor) and floats.dtype == torch.float32


def test_estimators_load_uint8_pixels():
    from sktransfer import ImageEmbedder, PretrainedImageClassifier

    prep = ImagePreprocessing(image_size=8)
    items = check_images(_mixed_images())
    for est in (PretrainedImageClassifier(), ImageEmbedder()):
        for training in (False, True):
            ds = est._make_dataset(items, "image", prep, training=training)
            assert ds[0][0].dtype == torch.uint8


def test_image_dataset_corrupt_file_reports_index(tmp_path):
    good = _save(Image.new("RGB", (4, 4)), tmp_path / "ok.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all" * 10)
    ds = ImageDataset(check_images([good, str(bad)]), ImagePreprocessing(image_size=4))
    with pytest.raises(ValueError, match=r"Sample 1.*bad\.png"):
        ds[1]


# --------------------------------------------------------------------------- load_image_folder


def test_load_image_folder(tmp_path):
    root = tmp_path / "data"
    for label, names in {
        "dog": ["b.JPG", "a.png", "sub/c.jpeg"],
        "cat": ["z.webp", "notes.txt"],
    }.items():
        for name in names:
            p = root / label / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"x")
    (root / ".hidden").mkdir()
    (root / "stray.png").write_bytes(b"x")
    paths, labels = load_image_folder(root)
    rel = [Path(p).relative_to(root).as_posix() for p in paths]
    assert rel == ["cat/z.webp", "dog/a.png", "dog/b.JPG", "dog/sub/c.jpeg"]
    assert labels == ["cat", "dog", "dog", "dog"]
    assert all(isinstance(p, str) for p in paths)
    assert load_image_folder(str(root)) == (paths, labels)
    paths, labels = load_image_folder(root, extensions=("png",))
    assert labels == ["dog"]
    with pytest.raises(ValueError, match="missing_dir"):
        load_image_folder(tmp_path / "missing_dir")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="class"):
        load_image_folder(empty)
    (empty / "a").mkdir()
    (empty / "a" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="No image"):
        load_image_folder(empty)


# --------------------------------------------------------------------------- texts


def test_check_texts_accepted_forms():
    texts = ["a b", "c"]
    assert check_texts(texts) == texts
    assert check_texts(tuple(texts)) == texts
    assert check_texts(np.array(texts)) == texts
    assert all(type(t) is str for t in check_texts(np.array(texts)))
    assert check_texts(np.array(texts, dtype=object).reshape(-1, 1)) == texts
    assert check_texts(pd.Series(texts, index=[5, 9])) == texts
    assert check_texts(pd.DataFrame({"t": texts})) == texts


@pytest.mark.parametrize("bad", [None, float("nan"), b"bytes", 3])
def test_check_texts_bad_items(bad):
    with pytest.raises(TypeError) as exc:
        check_texts(["ok", "fine", bad])
    assert "Sample 2" in str(exc.value) and type(bad).__name__ in str(exc.value)


def test_check_texts_errors():
    with pytest.raises(TypeError, match="list"):
        check_texts("just one string")
    with pytest.raises(ValueError, match="empty"):
        check_texts([])
    with pytest.raises(ValueError, match="column"):
        check_texts(pd.DataFrame({"a": ["x"], "b": ["y"]}))
    with pytest.raises(TypeError, match="Sample 1"):
        check_texts(pd.Series(["x", None]))


VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "hello",
    "world",
    "the",
    "cat",
    "sat",
]


def _tiny_tokenizer(with_token_type_ids):
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    vocab = {w: i for i, w in enumerate(VOCAB)}
    tk = tokenizers.Tokenizer(tokenizers.models.WordPiece(vocab, unk_token="[UNK]"))
    tk.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    tk.post_processor = tokenizers.processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if with_token_type_ids else [])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        model_input_names=names,
    )


@pytest.mark.parametrize("with_tti", [False, True])
def test_text_collate_real_tokenizer(with_tti):
    prep = TextPreprocessing(tokenizer=_tiny_tokenizer(with_tti), max_length=6)
    ds = TextDataset(
        check_texts(["Hello world", "the cat sat the cat sat the cat", "cat"]),
        y=[1, 0, 1],
    )
    collate = pickle.loads(pickle.dumps(make_text_collate(prep)))
    inputs, targets = collate([ds[i] for i in range(len(ds))])
    assert set(inputs) == {"input_ids", "attention_mask"} | (
        {"token_type_ids"} if with_tti else set()
    )
    ids = inputs["input_ids"]
    assert ids.shape == (3, 6)  # truncated to max_length
    assert ids[0, :4].tolist() == [2, 5, 6, 3]  # [CLS] hello world [SEP], not [UNK]
    assert (ids == 1).sum() == 0
    assert inputs["attention_mask"][0].tolist() == [1, 1, 1, 1, 0, 0]
    assert targets.dtype == torch.int64 and targets.tolist() == [1, 0, 1]
    # dynamic padding: a batch of short texts is short
    inputs, _ = collate([ds[2]])
    assert inputs["input_ids"].shape == (1, 3)
    # via a DataLoader
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    batch_inputs, batch_y = next(iter(loader))
    assert batch_inputs["input_ids"].shape[0] == 2 and batch_y.tolist() == [1, 0]


class _StubTokenizer:
    def __init__(self):
        self.calls = []

    def __call__(self, texts, **kwargs):
        self.calls.append(kwargs)
        n = len(texts)
        return {
            "input_ids": torch.ones(n, 2, dtype=torch.long),
            "attention_mask": torch.ones(n, 2, dtype=torch.long),
            "special_tokens_mask": torch.zeros(n, 2, dtype=torch.long),
        }


def test_text_collate_filters_keys_and_float_targets():
    tok = _StubTokenizer()
    collate = make_text_collate(TextPreprocessing(tokenizer=tok, max_length=17))
    inputs, y = collate([("a", 0.5), ("b", 1.5)])
    assert set(inputs) == {"input_ids", "attention_mask"}
    assert y.dtype == torch.float32 and y.tolist() == [0.5, 1.5]
    kw = tok.calls[0]
    assert kw["padding"] is True and kw["truncation"] is True
    assert kw["max_length"] == 17 and kw["return_tensors"] == "pt"
    ds = TextDataset(["a", "b"])
    _, y = collate([ds[0], ds[1]])
    assert y.dtype == torch.int64 and y.tolist() == [0, 0]


def test_text_dataset():
    ds = TextDataset(["a", "b"], y=np.array([2, 3]))
    assert len(ds) == 2 and ds[1] == ("b", 3)
    assert TextDataset(["a"])[0] == ("a", 0)
    with pytest.raises(ValueError):
        TextDataset(["a"], y=[1, 2])


# --------------------------------------------------------------------------- sample_keys


def test_sample_keys_files_are_keyed_by_their_bytes(tmp_path):
    p = _save(Image.new("RGB", (4, 4), "red"), tmp_path / "a.png")
    k1 = sample_keys([p])[0]
    assert k1.startswith("file:") and len(k1) == len("file:") + 40
    assert sample_keys([Path(p)]) == [k1]
    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert sample_keys([p]) == [k1]  # same bytes: the mtime does not matter
    _save(Image.new("RGB", (4, 4), "blue"), p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # new bytes under the old mtime
    k2 = sample_keys([p])[0]
    assert k2 != k1 and sample_keys([p]) == [k2]
    copy = shutil.copy(p, tmp_path / "b.png")
    assert sample_keys([copy]) == [k2]  # a key names content, not a path


def test_sample_keys_arrays_pil_texts():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    ka = sample_keys([a, a.copy()])
    assert ka[0] == ka[1] and ka[0].startswith("arr:")
    b = a.copy()
    b[0, 0, 0] ^= 1
    assert sample_keys([b])[0] != ka[0]
    assert sample_keys([a.astype(np.float32) / 255])[0] != ka[0]
    assert sample_keys([a.reshape(5, 6, 3)])[0] != ka[0]  # same bytes, other shape
    assert sample_keys([np.asfortranarray(a)]) == ka[:1]
    batch = check_images(np.stack([a, a]))
    assert sample_keys(batch) == ka
    big = a[..., 0].astype(">u2")
    assert sample_keys([big])[0] != sample_keys([big.astype("<u2")])[0]
    im = Image.fromarray(a)
    kp = sample_keys([im, Image.fromarray(a.copy())])
    assert kp[0] == kp[1] and kp[0].startswith("pil:")
    assert sample_keys([im.convert("L")])[0] != kp[0]
    kt = sample_keys(["héllo", "héllo", "hello"], kind="text")
    assert kt[0] == kt[1] != kt[2] and kt[0].startswith("txt:")
    with pytest.raises(TypeError, match="Sample 0"):
        sample_keys([3])
    with pytest.raises(TypeError, match="Sample 1"):
        sample_keys(["a", None], kind="text")
    with pytest.raises(ValueError, match="kind"):
        sample_keys(["a"], kind="audio")
