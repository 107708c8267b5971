"""LoRA adapters on the unfrozen blocks (``adapter="lora"``), through Hugging Face ``peft``.

``freeze_depth`` still says which blocks train; with ``adapter="lora"`` their own weights
stay frozen and low-rank adapters (Hu et al. 2021: ``W + (alpha / r) B A``, ``B = 0`` at the
start, so the network starts as the pretrained one) are trained instead, with the head.

* :func:`lora_targets`: the layers adapted in the unfrozen blocks: every ``nn.Linear``
  (the attention and MLP projections of text encoders and ViTs), every ``nn.Conv2d``
  peft can merge (``groups == 1``: depthwise and grouped convolutions are skipped, as are
  dilated ones, non-zero padding modes and subclasses that pad in their own forward,
  e.g. a "same" padding, which peft's LoRA convolution does not reproduce; a subclass
  that pads by zero, EfficientNet-Lite's 1x1 convolutions, is adapted as a plain one),
  and ``nn.MultiheadAttention`` with one shared ``in_proj`` (torchvision's
  ViT; its ``out_proj`` is adapted through it, as its ``forward`` is never called).
* :func:`add_lora`: peft's :class:`~peft.LoraModel` injects the adapters in place into the
  blocks after the frozen boundary (so the frozen prefix, and the cache of its
  activations, are untouched) and only adapter parameters are left trainable.
* :func:`merge_lora`: after training the adapters are merged into the weights
  (``merge_and_unload``), on the CPU, so ``module_`` holds plain modules again (no cost at
  predict; ONNX export and int8 quantisation see ordinary layers). The adapter tensors
  and their configuration are returned (``lora_adapters_``).
* :func:`apply_adapters`: the same merge of saved adapters into freshly loaded pretrained
  weights (``sktransfer.save(..., store_backbone="reference")``), bit-identical to the fit's.
"""

from __future__ import annotations

import re

import torch
from torch import nn

_PEFT_HINT = 'adapter="lora" needs the "peft" extra: pip install "sktransfer[peft]"'
_LORA_PARAM = "lora_"  # peft's prefix of every adapter parameter name


def require_peft():
    """``peft``, or ImportError with the install hint (peft imports transformers, made
    importable first: :mod:`sktransfer.backbones.compat`)."""
    import importlib.util

    if importlib.util.find_spec("peft") is None:
        raise ImportError(_PEFT_HINT)
    from sktransfer.backbones.compat import ensure_transformers_importable

    ensure_transformers_importable()
    import peft

    return peft


def is_adapter_param(name: str) -> bool:
    """Whether a parameter name is one of peft's LoRA adapter tensors."""
    return any(part.startswith(_LORA_PARAM) for part in name.split("."))


def _adaptable(module) -> bool:
    if isinstance(module, nn.MultiheadAttention):
        return bool(getattr(module, "_qkv_same_embed_dim", False))
    if isinstance(module, nn.Conv2d):
        return (
            module.groups == 1
            and tuple(module.dilation) == (1, 1)
            and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)
            and (_is_plain_conv(module) or _zero_pad_conv(module))
        )
    return isinstance(module, nn.Linear)


def _is_plain_conv(module) -> bool:
    """An ``nn.Conv2d`` whose forward and constructor are Conv2d's own (peft builds the
    adapter convolution with the layer's own class and arguments)."""
    cls = type(module)
    return cls.forward is nn.Conv2d.forward and cls.__init__ is nn.Conv2d.__init__


def _zero_pad_conv(module) -> bool:
    """A conv subclass that pads by zero before a plain convolution (EfficientNet-Lite's
    ``Conv2dStaticSamePadding`` of a 1x1 kernel): adapted as the plain conv it is."""
    pad = getattr(module, "static_padding", None)
    if not isinstance(pad, nn.Module) or any(True for _ in pad.parameters()):
        return False
    if isinstance(pad, nn.ZeroPad2d):
        return not any(pad.padding)
    x = torch.zeros(1, 1, 1, 1)
    return pad(x) is x  # an identity (nn.Identity or the library's own)


def _as_plain_conv(module) -> nn.Conv2d:
    """A plain ``nn.Conv2d`` sharing ``module``'s parameters (merging updates both)."""
    conv = nn.Conv2d(
        module.in_channels, module.out_channels, module.kernel_size, module.stride,
        module.padding, bias=module.bias is not None, device="meta",
    )  # fmt: skip
    conv.weight, conv.bias = module.weight, module.bias
    return conv


def lora_targets(blocks: dict) -> list[str]:
    """Names (``"<block index>.<path>"``) of the adaptable layers in ``blocks``
    (``{str(index): block}``), outermost first; nothing inside an adapted layer or a
    ``MultiheadAttention`` is named again."""
    names = []
    for key, block in blocks.items():
        skip = []
        for path, module in block.named_modules(prefix=key):
            if any(path.startswith(s + ".") for s in skip):
                continue
            if _adaptable(module):
                names.append(path)
                skip.append(path)
            elif isinstance(module, nn.MultiheadAttention):
                skip.append(path)  # separate q/k/v weights: peft cannot adapt it
    return names


def check_adapter(adapter, n_frozen, n_blocks) -> None:
    """The settings ``adapter="lora"`` cannot use: a clear ValueError before any forward."""
    if adapter is None:
        return
    if n_frozen >= n_blocks:
        raise ValueError(
            "adapter='lora' adapts the unfrozen blocks, but freeze_depth='all' freezes them "
            "all: pass an int freeze_depth (e.g. -2 for the last two blocks, 0 for all)"
        )
    require_peft()


def add_lora(net, n_frozen, *, rank, alpha, dropout, channels_last=False) -> dict:
    """Inject LoRA adapters into ``net.blocks[n_frozen:]`` (in place); returns the config.

    Only adapter parameters stay trainable in those blocks (``net.adapter_only``); the
    head stays trainable, the pool is frozen.
    """
    peft = require_peft()
    blocks = nn.ModuleDict({str(i): net.blocks[i] for i in range(n_frozen, len(net.blocks))})
    targets = lora_targets(blocks)
    if not targets:
        raise ValueError(
            "adapter='lora' found no layer it can adapt in the unfrozen blocks "
            f"{net.block_names[n_frozen:]} (nn.Linear, nn.Conv2d with groups=1, "
            "nn.MultiheadAttention); unfreeze more blocks or use adapter=None"
        )
    config = {
        "r": int(rank),
        "lora_alpha": float(alpha),
        "lora_dropout": float(dropout),
        "target_modules": [f"blocks.{t}" for t in targets],
    }
    net.__dict__["lora_tuner"] = _inject(peft, net, config)  # (not a registered submodule)
    if channels_last:  # the adapter convolutions in the layout the blocks run in
        for name, module in net.blocks.named_modules():
            if isinstance(module, nn.Conv2d) and is_adapter_param(name):
                module.to(memory_format=torch.channels_last)
    net.adapter_only = True
    net.set_frozen(n_frozen)
    return config


def _inject(peft, net, config):
    """peft's ``LoraModel`` over a container of the blocks ``config`` names; the blocks
    are adapted in place and written back (a block that is itself a target is replaced).
    Returns the ``LoraModel`` (its ``merge_and_unload`` ends the adaptation)."""
    idx = sorted({int(t.split(".")[1]) for t in config["target_modules"]})
    blocks = nn.ModuleDict({str(i): net.blocks[i] for i in idx})
    pattern = "|".join(re.escape(t[len("blocks.") :]) for t in config["target_modules"])
    lora_config = peft.LoraConfig(
        r=config["r"],
        lora_alpha=config["lora_alpha"],
        lora_dropout=config["lora_dropout"],
        target_modules=f"^(?:{pattern})$",
        bias="none",
    )
    swapped = []  # (path, original): conv subclasses adapted as the plain conv they are
    for target in config["target_modules"]:
        path = target[len("blocks.") :]
        module = blocks.get_submodule(path)
        if isinstance(module, nn.Conv2d) and not _is_plain_conv(module):
            _set_submodule(blocks, path, _as_plain_conv(module))
            swapped.append((path, module))
    tuner = peft.LoraModel(blocks, lora_config, "default")
    tuner.sktransfer_swapped = swapped
    _write_back(net, tuner.model)
    return tuner


def _set_submodule(root, path, module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _write_back(net, blocks) -> None:
    for key, block in blocks.items():
        net.blocks[int(key)] = block


def adapter_tensors(net) -> dict:
    """The adapter tensors of ``net`` by name in ``module_`` (peft's adapter name removed),
    detached CPU copies."""
    return {
        name.replace(".default.", "."): p.detach().cpu().clone()
        for name, p in net.named_parameters()
        if is_adapter_param(name)
    }


def _merge(net, tuner) -> None:
    """peft's ``merge_and_unload``: every LoRA layer merged into its base layer, unwrapped."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in net.blocks.modules():  # one layout at fit and at load: the same bits
        if isinstance(module, BaseTunerLayer):
            for part in (module.lora_A, module.lora_B):
                part.to(memory_format=torch.contiguous_format)
    blocks = tuner.merge_and_unload()
    for path, original in tuner.sktransfer_swapped:  # (its parameters hold the merged values)
        _set_submodule(blocks, path, original)
    _write_back(net, blocks)


def merge_lora(net, config, n_frozen) -> dict:
    """Merge the adapters into the weights (on the CPU, so that a reference save re-merges
    them bit-identically) and unwrap them; returns ``lora_adapters_``."""
    peft = require_peft()
    tensors = adapter_tensors(net)
    device = next(net.parameters()).device
    if device.type != "cpu":
        net.cpu()
    with torch.no_grad():
        _merge(net, net.__dict__.pop("lora_tuner"))
    net.adapter_only = False
    net.set_frozen(n_frozen)
    if device.type != "cpu":
        net.to(device)
    return {**config, "peft_version": peft.__version__, "tensors": tensors}


def apply_adapters(net, adapters) -> None:
    """Merge saved ``lora_adapters_`` into ``net`` (a freshly built TransferNet on the CPU).

    The adapters are injected with their saved configuration, set to their saved values
    and merged exactly as :func:`merge_lora` did at the end of ``fit``.
    """
    peft = require_peft()
    with torch.random.fork_rng(devices=[]):  # peft's adapter init draws from torch's RNG
        tuner = _inject(peft, net, adapters)
    own = {n.replace(".default.", "."): p for n, p in net.named_parameters() if is_adapter_param(n)}
    saved = adapters["tensors"]
    if set(own) != set(saved):
        missing, extra = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
        raise ValueError(
            f"the saved LoRA adapters do not fit the backbone: missing {missing[:3]}, "
            f"unexpected {extra[:3]}"
        )
    with torch.no_grad():
        for name, p in own.items():
            t = saved[name]
            if t.shape != p.shape:
                raise ValueError(
                    f"saved LoRA tensor {name} has shape {tuple(t.shape)}, the rebuilt "
                    f"adapter {tuple(p.shape)}"
                )
            p.copy_(t)
        _merge(net, tuner)
    net.set_frozen(net.n_frozen)


def count_trainable(net) -> int:
    """Trainable parameters of ``net`` now (adapters or unfrozen blocks, pool) plus the head."""
    head = {id(p) for p in net.head.parameters()}
    n = sum(p.numel() for p in net.head.parameters())
    return n + sum(p.numel() for p in net.parameters() if p.requires_grad and id(p) not in head)
