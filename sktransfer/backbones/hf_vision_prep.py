"""Image preprocessing of a Hugging Face vision encoder, from its ``preprocessor_config.json``.

The image processors of ViT, DINOv2, CLIP, SigLIP, ConvNeXt and Swin differ in how
they resize: ``size`` is ``{"height", "width"}`` (ViT, SigLIP, Swin: a warp to that
size), ``{"shortest_edge"}`` with a ``crop_size`` (CLIP, DINOv2: resize the shorter
side, centre-crop), or ConvNeXt's ``{"shortest_edge"}`` with ``crop_pct`` (below 384
pixels: resize the shorter side to ``shortest_edge / crop_pct``, centre-crop
``shortest_edge``; from 384 on: resize to the square, no crop).
"""

from __future__ import annotations

from sktransfer.inputs.preprocessing import ImagePreprocessing

__all__ = ["preprocessing_from_config"]

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}
_CONVNEXT_NO_CROP = 384  # ConvNextImageProcessor warps without a crop from this size on


def config_image_size(config) -> int:
    """The square input size a model config names (``image_size``, default 224)."""
    size = getattr(config, "image_size", 224)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def default_preprocessing(config) -> ImagePreprocessing:
    """The config's ``image_size`` with the ImageNet mean and std."""
    return ImagePreprocessing(
        image_size=config_image_size(config), mean=IMAGENET[0], std=IMAGENET[1]
    )


def _edge(size):
    """``(crop-or-resize edge, is_shortest_edge)`` from an image-processor ``size`` entry."""
    if isinstance(size, (int, float)):
        return int(size), False
    if isinstance(size, dict):
        if "shortest_edge" in size:
            return int(size["shortest_edge"]), True
        if "height" in size:
            return int(min(size["height"], size.get("width", size["height"]))), False
    return None, False


def _triple(value, default):
    if value is None:
        return default
    if isinstance(value, (int, float)):
        return (float(value),) * 3
    return tuple(float(v) for v in value)


def _crop_pct(processor, resize, shortest):
    """ConvNeXt's ``crop_pct`` rule: ``(image_size, resize_size)`` or None if it does not apply."""
    pct = processor.get("crop_pct")
    if pct is None or not shortest or resize is None or processor.get("crop_size") is not None:
        return None
    pct = float(pct)
    if not 0 < pct <= 1:
        raise ValueError(f"preprocessor_config.json: crop_pct must be in (0, 1], got {pct!r}")
    if resize >= _CONVNEXT_NO_CROP:
        return resize, None
    return resize, int(resize / pct)


def preprocessing_from_config(processor: dict | None, config) -> ImagePreprocessing:
    """:class:`ImagePreprocessing` from a ``preprocessor_config.json`` dict (or the config).

    Parameters
    ----------
    processor : dict or None
        The image processor's JSON; None: :func:`default_preprocessing` of ``config``.
    config : transformers.PretrainedConfig
        Supplies ``image_size`` when the processor names no size.

    Returns
    -------
    ImagePreprocessing
    """
    if not processor:
        return default_preprocessing(config)
    resize, shortest = _edge(processor.get("size"))
    crop, _ = _edge(processor.get("crop_size"))
    if not processor.get("do_center_crop", crop is not None) or crop is None:
        crop = None
    by_pct = _crop_pct(processor, resize, shortest)
    if by_pct is not None:
        image_size, resize_size = by_pct
    else:
        image_size = crop or resize or config_image_size(config)
        resize_size = int(resize) if crop is not None and resize else None
    mean, std = IMAGENET
    if processor.get("do_normalize", True):
        mean = _triple(processor.get("image_mean"), mean)
        std = _triple(processor.get("image_std"), std)
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    resample = processor.get("resample", 2)
    return ImagePreprocessing(
        image_size=int(image_size),
        resize_size=resize_size,
        mean=mean,
        std=std,
        interpolation=_PIL_RESAMPLE.get(resample, "bicubic"),
    )
