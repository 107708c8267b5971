"""sktransfer: pretrained image and text networks as scikit-learn estimators.

Public names are imported lazily so ``import sktransfer`` (and the CLI's
``--help``) stays fast; the first attribute access imports torch.
"""

from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "PretrainedImageClassifier": "sktransfer.image",
    "PretrainedImageRegressor": "sktransfer.image",
    "ImageEmbedder": "sktransfer.image",
    "PretrainedTextClassifier": "sktransfer.text",
    "PretrainedTextRegressor": "sktransfer.text",
    "TextEmbedder": "sktransfer.text",
    "list_backbones": "sktransfer.backbones",
    "load_image_folder": "sktransfer.data",
    "save": "sktransfer.io.safe_format",
    "load": "sktransfer.io.safe_format",
    "set_config": "sktransfer.cache",
    "get_config": "sktransfer.cache",
    "cache_info": "sktransfer.cache",
    "clear_cache": "sktransfer.cache",
    "plot_history": "sktransfer.plotting",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name):
    if name in _PUBLIC:
        value = getattr(import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sktransfer' has no attribute {name!r}")


def __dir__():
    return __all__
