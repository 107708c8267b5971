"""Parameter texts of :mod:`sktransfer._estimator.docs` that are not shared by every
estimator: the training modes (``objective``, ``adapter``) and the per-class overrides."""

from __future__ import annotations

#: text classifier only (SetFit-style contrastive fine-tuning)
_OBJECTIVE = (
    '{"cross_entropy", "contrastive"}',
    """``"cross_entropy"``: fine-tune the unfrozen blocks and the head on the
    classification loss. ``"contrastive"`` (SetFit): train the unfrozen blocks on
    sentence pairs drawn from ``y`` (same label: cosine similarity 1, different: 0;
    the MSE ``CosineSimilarityLoss`` on the pooled embeddings) for ``max_epochs``
    epochs of ``batch_size`` pairs with the usual optimizer knobs and no validation
    split (a pair's loss weighs the product of its two samples' weights), then fit
    the logistic head exactly on the new embeddings
    (``history_``: the contrastive epochs, ``phase="contrastive"``, then the head).
    ``freeze_depth="auto"`` (the default) trains the whole encoder, as SetFit
    does; ``"all"`` raises (nothing to train). Needs at least 2 samples per class
    and a float ``lr``; ``unfreeze_schedule`` and the regularisers do not apply.
    Multi-label ``y``: SetFit's multi-label pairs (for each label of a sample, a
    partner with that label; a negative sharing none), then the one-vs-rest head.""",
)
_NUM_ITERATIONS = (
    "int",
    """``objective="contrastive"`` only: rounds of pair drawing (SetFit's
    ``num_iterations``); each round gives every sample one same-label and one
    other-label partner, so an epoch has ``2 * num_iterations * n_samples`` pairs
    (fewer where ``sample_weight`` is 0).""",
)

#: every fine-tuning estimator: LoRA adapters (:mod:`sktransfer.training.lora`)
ADAPTER = {
    "adapter": (
        '{"lora"} or None',
        """
        ``None``: the unfrozen blocks train all their weights. ``"lora"``: they stay
        frozen and LoRA adapters (Hu et al. 2021, through Hugging Face ``peft``:
        ``pip install "sktransfer[peft]"``) train with the head; ``freeze_depth`` still
        says which blocks are adapted (an int; ``"all"`` raises). Adapted layers: every
        ``nn.Linear`` (attention and MLP projections of text encoders and ViTs), every
        ``nn.Conv2d`` with ``groups=1`` (depthwise, grouped and dilated convolutions,
        which peft cannot merge or reproduce, stay frozen), and
        ``nn.MultiheadAttention`` with a shared ``in_proj`` (torchvision's ViT). Norm
        layers, biases and the pool do not train. After ``fit`` the adapters are
        merged into the weights (``module_`` holds plain layers: no cost at predict,
        ONNX and int8 work as usual) and kept in ``lora_adapters_``, so
        ``sktransfer.save(..., store_backbone="reference")`` of a packaged backbone
        stores adapters and head only. Works with the frozen-prefix activation cache,
        ``unfreeze_schedule``, ``layer_decay``, ``lr="auto"``, L2-SP (which then pulls
        the adapters toward their initial values: ``B = 0``, the pretrained weights)
        and ``objective="contrastive"``.
        """,
    ),
    "lora_rank": ("int", '``adapter="lora"``: the rank ``r`` of each adapter (peft\'s ``r``).'),
    "lora_alpha": (
        "float",
        '``adapter="lora"``: the adapters\' scale is ``lora_alpha / lora_rank``.',
    ),
    "lora_dropout": (
        "float in [0, 1)",
        '``adapter="lora"``: dropout on each adapted layer\'s input, adapter branch only.',
    ),
}


# --------------------------------------------------------------------------- per family
_IMAGE_BACKBONE = (
    "str, path, torch.nn.Module, fitted sktransfer image estimator or None",
    """``None`` is the packaged offline ``"efficientnet_lite0"``. A registry name
    (see :func:`sktransfer.list_backbones`), a ``torch.nn.Module`` (an
    ``nn.Sequential``'s children are its blocks), or a fitted estimator whose
    fine-tuned backbone is reused with a new head.""",
)
_TEXT_BACKBONE = (
    "str, path, fitted sktransfer text estimator or None",
    """``None`` is the packaged offline ``"all-MiniLM-L6-v2"``. A local Hugging
    Face model directory, a hub id already in the local cache, or a fitted
    text estimator whose fine-tuned encoder is reused with a new head.""",
)
_TEXT_BLOCKS = """``k >= 0``: the embeddings and the first ``k - 1`` layers frozen, the
    rest fine-tuned (0 = full fine-tuning). ``-k``: all but the last ``k`` blocks frozen
    (the blocks are the embeddings and each encoder layer)."""
_IMAGE_BLOCKS = """``k >= 0``: the first ``k`` blocks frozen, the rest fine-tuned
    (0 = full fine-tuning). ``-k``: all but the last ``k`` frozen."""
_CLASSIFIER_HEAD = "frozen features + a logistic-regression head fitted to convergence."
_RIDGE_HEAD = "frozen features + a ridge head solved exactly."

_REGRESSOR = {
    "head_init": (
        '{"probe", "random"}',
        """Before fine-tuning, start the head from the ridge solution on frozen
        features ("probe", LP-FT) or from a random init.""",
    ),
    "early_stopping": (
        '"auto" or bool',
        """Hold out ``validation_fraction`` (not stratified) while fine-tuning, stop after
        ``n_iter_no_change`` epochs without a better validation loss and restore the best
        epoch's weights (flagged ``best`` in ``history_``). ``"auto"`` (the default) does so
        when the validation split would hold at least 100 samples (1,000 at the default
        fraction); without it every epoch trains on all samples and the last one is kept.""",
    ),
    "verbose": (
        "int",
        """0 prints nothing; 1 shows tqdm progress bars (stderr) for feature
        extraction and epochs, and an epoch table (stdout: train loss, valid
        loss, valid R², lr, time).""",
    ),
    "tta": (
        "int or None",
        """Test-time augmentation: the predictions of ``tta`` deterministic extra
        views (flip, shifted crops) are averaged with the image's own.""",
    ),
}
_EMBEDDER_BATCH = (
    "int or None",
    """Inference micro-batch size; ``None``: chosen for the device (as the
    estimators' ``inference_batch_size``).""",
)


def _freeze(head, blocks):
    return ('"all" or int', f'``"all"``: {head}\n    {blocks}')


#: the overrides of the shared parameter text, per public class
OVERRIDES = {
    "PretrainedImageClassifier": {
        "backbone": _IMAGE_BACKBONE,
        "freeze_depth": _freeze(_CLASSIFIER_HEAD, _IMAGE_BLOCKS),
    },
    "PretrainedImageRegressor": {
        "backbone": _IMAGE_BACKBONE,
        "freeze_depth": _freeze(_RIDGE_HEAD, _IMAGE_BLOCKS),
        **_REGRESSOR,
    },
    "ImageEmbedder": {"backbone": _IMAGE_BACKBONE, "batch_size": _EMBEDDER_BATCH},
    "PretrainedTextClassifier": {
        "backbone": _TEXT_BACKBONE,
        "freeze_depth": _freeze(_CLASSIFIER_HEAD, _TEXT_BLOCKS),
    },
    "PretrainedTextRegressor": {
        "backbone": _TEXT_BACKBONE,
        "freeze_depth": _freeze(_RIDGE_HEAD, _TEXT_BLOCKS),
        **{k: v for k, v in _REGRESSOR.items() if k != "tta"},
    },
    "TextEmbedder": {"backbone": _TEXT_BACKBONE, "batch_size": _EMBEDDER_BATCH},
}
