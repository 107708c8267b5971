"""LoRA adapters in the safe file format (``lora_adapters_`` of an ``adapter="lora"`` fit).

The adapter tensors go into the weights member under :data:`PREFIX` (every file, so a
loaded model keeps ``lora_adapters_`` and can be saved again either way); their
configuration into the manifest's ``lora_adapters``. A default (``"embed"``) file also
holds the merged weights and loads without ``peft``. With ``store_backbone="reference"``
the packaged weights with the adapters merged into them (:func:`merge_into`, the fit's own
merge) are the reference: every merged weight that equals them bit for bit is left out
and re-made on load, checked by the reference digest.
"""

from __future__ import annotations

ATTR = "lora_adapters_"
PREFIX = "lora/"
_CONFIG_KEYS = {
    "r": (int,),
    "lora_alpha": (int, float),
    "lora_dropout": (int, float),
    "target_modules": (list,),
}


def to_file(est) -> tuple[dict | None, dict]:
    """``(manifest entry or None, {PREFIX + name: tensor})`` of ``est``'s adapters."""
    adapters = getattr(est, ATTR, None)
    if adapters is None:
        return None, {}
    config = {k: adapters[k] for k in (*_CONFIG_KEYS, "peft_version")}
    tensors = {PREFIX + k: v.detach().cpu().contiguous() for k, v in adapters["tensors"].items()}
    return config, tensors


def from_file(meta, state) -> tuple[dict | None, dict]:
    """``(lora_adapters_ or None, the state without the adapter tensors)``."""
    tensors = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
    rest = {k: v for k, v in state.items() if not k.startswith(PREFIX)}
    config = meta.get("lora_adapters")
    if config is None:
        if tensors:
            raise ValueError("the file holds LoRA tensors but no lora_adapters entry")
        return None, rest
    if not isinstance(config, dict):
        raise ValueError("malformed lora_adapters entry: not a mapping")
    bad = [k for k, types in _CONFIG_KEYS.items() if not isinstance(config.get(k), types)]
    if bad or not tensors:
        raise ValueError(f"malformed lora_adapters entry (fields {bad}, {len(tensors)} tensors)")
    if not all(isinstance(t, str) and t.startswith("blocks.") for t in config["target_modules"]):
        raise ValueError("malformed lora_adapters entry: target_modules must name blocks")
    # the rank sizes what load allocates before the saved tensors are copied in: it must be
    # theirs (they are bounded by the file), as must the number of adapted layers
    r = config["r"]
    ranks = {int(t.shape[0]) for k, t in tensors.items() if ".lora_A." in k and t.dim() >= 1}
    ranks |= {int(t.shape[1]) for k, t in tensors.items() if ".lora_B." in k and t.dim() >= 2}
    n_a = sum(".lora_A." in k for k in tensors)
    if ranks != {r} or len(config["target_modules"]) > n_a:
        raise ValueError(
            f"malformed lora_adapters entry: rank {r!r} and {len(config['target_modules'])} "
            f"layers, the saved tensors have ranks {sorted(ranks)} for {n_a} layers"
        )
    if not (config["lora_alpha"] > 0 and 0 <= config["lora_dropout"] < 1):
        raise ValueError("malformed lora_adapters entry: lora_alpha or lora_dropout out of range")
    return {**config, "tensors": tensors}, rest


def merge_into(net, adapters) -> None:
    """Merge ``adapters`` into ``net`` (freshly built) as ``fit`` merged them."""
    from sktransfer.training.lora import apply_adapters

    apply_adapters(net, adapters)
