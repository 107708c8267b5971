"""Shared numpydoc text of the estimators' constructor parameters, and a small parser.

Every public estimator takes some of the same parameters (``freeze_depth``, ``lr``, the
training knobs, ``device``, ...). Their descriptions live here once, in :data:`PARAMETERS`
(taken from ``PretrainedImageClassifier``'s docstring, the most complete one), and
:func:`parameters_section` assembles a class's ``Parameters`` section from its
``__init__`` signature: the names and their order, and each ``default=``, come from the
signature, so a docstring cannot drift from the code (skorch generates its shared
parameter docs the same way). A class states only what differs for it in ``overrides``.

:func:`document_parameters` is the class decorator that applies it: the class docstring
holds one line ``{parameters}`` where the section goes::

    @document_parameters(overrides={"max_epochs": ("int", "Fine-tuning epochs.")})
    class PretrainedTextClassifier(_TextInput, PretrainedClassifierBase):
        '''Text classifier on a pretrained transformer encoder.

        {parameters}

        Attributes
        ----------
        ...
        '''

:func:`sections` and :func:`parameter_names` read numpydoc docstrings back (the docstring
tests use them; numpydoc itself is not a dependency).
"""

from __future__ import annotations

import inspect
import re

from sktransfer._estimator.docs_texts import _NUM_ITERATIONS, _OBJECTIVE, ADAPTER, OVERRIDES

#: numpydoc's section titles (``numpydoc.docscrape.NumpyDocString.sections``)
SECTION_TITLES = (
    "Parameters",
    "Returns",
    "Yields",
    "Receives",
    "Other Parameters",
    "Raises",
    "Warns",
    "Warnings",
    "See Also",
    "Notes",
    "References",
    "Examples",
    "Attributes",
    "Methods",
)

#: name -> (type, description); the ``default=`` is added from the signature. The texts
#: are the classifier's; a regressor overrides the few that name the logistic head or
#: accuracy (``freeze_depth``, ``head_init``, ``early_stopping``, ``verbose``, ``tta``).
PARAMETERS: dict[str, tuple[str, str]] = {
    "backbone": (
        "str, path, torch.nn.Module, fitted sktransfer estimator or None",
        """
        ``None`` is the packaged offline model of the modality. A registry name
        (see :func:`sktransfer.list_backbones`), a ``torch.nn.Module`` (an
        ``nn.Sequential``'s children are its blocks), or a fitted estimator whose
        fine-tuned backbone is reused with a new head.
        """,
    ),
    "freeze_depth": (
        '"all", "auto" or int',
        """
        ``"all"``: frozen features + a logistic-regression head fitted to
        convergence. ``k >= 0``: the first ``k`` blocks frozen, the rest
        fine-tuned (0 = full fine-tuning). ``-k``: all but the last ``k`` frozen.
        ``"auto"``: ``"all"``, except with ``objective="contrastive"`` (text
        classifier), where it is ``0``: the whole encoder trains, as in SetFit.
        """,
    ),
    **ADAPTER,
    "objective": _OBJECTIVE,
    "num_iterations": _NUM_ITERATIONS,
    "lr": (
        'float or "auto"',
        """
        Peak learning rate for fine-tuning (unused when ``freeze_depth="all"``).
        ``"auto"``: an LR range test on the training split picks it inside
        ``fit`` (fastai's ``lr_find``: a tenth of the rate at the loss minimum);
        the rate used is stored as ``lr_``.
        """,
    ),
    "lr_schedule": (
        '{"warmup_cosine", "warmup_linear", "onecycle", "constant"}',
        """
        Per-batch schedule: linear warmup over 10% of the steps then cosine decay
        to 0; the same warmup then linear decay to 0 (Hugging Face's and SetFit's);
        one-cycle (Smith); or constant.
        """,
    ),
    "max_epochs": (
        "int",
        """
        Fine-tuning epochs (unused when ``freeze_depth="all"``); with
        ``unfreeze_schedule``, the epochs after the head-only ones.
        """,
    ),
    "batch_size": ("int", "Training batch size (inference: ``inference_batch_size``)."),
    "inference_batch_size": (
        "int or None",
        """
        Micro-batch of every forward pass without gradients (frozen features,
        cached activations, predictions). ``None``: chosen for the device (CPU:
        a batch whose activations stay in cache, 4 images at 224 px, then
        calibrated per backbone on the first batches; CUDA: the largest that
        fits); see :mod:`sktransfer.runtime.microbatch` and
        :mod:`sktransfer.runtime.batch_tuning`. Outputs do not depend on it beyond
        float rounding, and cached features are reused across sizes.
        """,
    ),
    "optimizer": (
        '{"adamw", "adam", "sgd"} or torch optimizer class',
        "The fine-tuning optimizer; a class is called with the parameter groups and ``lr``.",
    ),
    "weight_decay": ("float", "Ignored when ``l2sp_alpha > 0`` (the L2-SP penalty replaces it)."),
    "layer_decay": (
        "float in (0, 1] or None",
        """
        Discriminative rates: the head gets ``lr``, the last block
        ``lr * layer_decay``, the one below ``lr * layer_decay**2``, ...
        """,
    ),
    "unfreeze_schedule": (
        "int or None",
        """
        Gradual unfreezing (fastai ``fine_tune``): train the head alone for this
        many epochs first, then the blocks ``freeze_depth`` leaves trainable for
        ``max_epochs`` epochs.
        """,
    ),
    "l2sp_alpha": (
        "float",
        """
        L2-SP strength (Li et al. 2018): ``alpha/2 ||w - w0||^2`` pulls the
        fine-tuned backbone weights toward their pretrained values ``w0``.
        """,
    ),
    "l2sp_beta": ("float", "With L2-SP, ``beta/2 ||W_head||^2`` on the head's weights."),
    "regularizer": (
        '{"l2sp", "lwf", "delta", "bss"} or None',
        """
        A fine-tuning pull toward the source model, ``min L + strength * R(f_t, f_s)``
        (:mod:`sktransfer.training.regularization`): ``"l2sp"`` the weights toward their
        pretrained values (as ``l2sp_alpha``); ``"lwf"`` (learning without forgetting) the
        pooled features toward the source network's on the same inputs; ``"delta"`` the
        last block's feature maps toward the source's, weighted by the source channels'
        attention; ``"bss"`` batch spectral shrinkage, a penalty on the smallest singular
        values of the batch's features. ``None``: no pull. Ignored in frozen mode.
        """,
    ),
    "regularizer_strength": (
        "float >= 0 or None",
        """
        The strength of ``regularizer``; ``None`` takes each one's default
        (:data:`sktransfer.training.regularization.DEFAULT_STRENGTH`).
        """,
    ),
    "warm_start": (
        "bool",
        """
        As in ``MLPClassifier``: ``fit`` on a fitted estimator (same classes or outputs)
        fine-tunes on from its weights instead of from the backbone.
        """,
    ),
    "C": (
        "float",
        """
        Inverse L2 strength of the logistic-regression head (as in
        ``LogisticRegression``); used in frozen mode and for the head warm start.
        """,
    ),
    "alpha": (
        '"auto" or float >= 0',
        """
        L2 strength of the ridge head (as in ``Ridge``: on the weights, not the
        intercept, against the sum of the weighted squared errors); used in frozen
        mode and for the head warm start. ``"auto"`` (the default) picks it by exact
        leave-one-out error, as ``RidgeCV`` does, over 22 strengths spaced evenly in
        log between 1e-4 and 1e3 times the mean squared singular value of the centred
        features (the pick is ``alpha_``); a fixed strength such as ``Ridge``'s 1.0
        interpolates the training targets when there are more features than samples
        (1,280 image features).
        """,
    ),
    "head_init": (
        '{"probe", "random"}',
        """
        Before fine-tuning, start the head from the linear probe on frozen
        features ("probe", LP-FT) or from a random init.
        """,
    ),
    "class_weight": (
        '"balanced", dict or None',
        """
        Per-class loss weights (``{label: weight}`` or ``n / (k * count)``),
        multiplied into ``sample_weight``; honoured by the probe head and the
        fine-tuning loss.
        """,
    ),
    "early_stopping": (
        '"auto" or bool',
        """
        Hold out ``validation_fraction`` (stratified) while fine-tuning, stop after
        ``n_iter_no_change`` epochs without a better validation loss and restore
        the best epoch's weights (flagged ``best`` in ``history_``). ``"auto"`` (the
        default) does so when the validation split would hold at least 100 samples
        (1,000 at the default fraction), as ``HistGradientBoostingClassifier``'s
        ``"auto"``: a smaller split cannot tell epochs apart and costs a tenth of few
        labels; without it every epoch trains on all samples and the last one is kept.
        """,
    ),
    "validation_fraction": (
        "float",
        "Share of the training samples held out for early stopping and ``history_``.",
    ),
    "n_iter_no_change": (
        "int",
        "Epochs without a better validation loss before early stopping ends the fit.",
    ),
    "precision": ('{"auto", "fp32", "bf16"}', '"auto": bf16 autocast on CUDA, fp32 on the CPU.'),
    "num_workers": ("int", "``DataLoader`` worker processes for decoding and augmentation."),
    "compile": ("bool", "``torch.compile`` the trained part of the network."),
    "device": (
        "str",
        '"auto" (cuda when available, resolved at fit/predict time), "cpu", "cuda", "cuda:N".',
    ),
    "cache_dir": (
        "str, path or None",
        """
        Directory for the on-disk tier of the feature cache, shared by processes
        (None: the global ``sktransfer.set_config(cache_dir=...)``, by default off).
        """,
    ),
    "random_state": (
        "int, RandomState or None",
        "One seed for torch, numpy, the data order, the validation split and augmentation.",
    ),
    "verbose": (
        "int",
        """
        0 prints nothing; 1 shows tqdm progress bars (stderr) for feature
        extraction and epochs, and an epoch table (stdout: train loss, valid
        loss, valid accuracy, lr, time).
        """,
    ),
    "weights": (
        "str, path or None",
        """
        The backbone's pretrained weights: "default", a torchvision weights name,
        a local state-dict path, or None (random init).
        """,
    ),
    "image_size": ("int or None", "Input resolution; None uses the backbone's own."),
    "augment": (
        '{"light", "standard"}, callable or None',
        """
        Training-time augmentation: "light" = horizontal flip + random-resized
        crop of 80-100% of the area; "standard" = random-resized crop of 35-100%,
        flip and a small colour jitter; or a ``PIL.Image -> PIL.Image`` callable.
        Seeded by ``random_state``. Disables the frozen-prefix activation cache
        during training.
        """,
    ),
    "tta": (
        "int or None",
        """
        Test-time augmentation: the probabilities of ``tta`` deterministic extra
        views (flip, shifted crops) are averaged with the image's own.
        """,
    ),
    "train_bn": (
        "bool",
        """
        Whether BatchNorm layers in fine-tuned blocks update their running
        statistics. False (Keras' advice for fine-tuning) keeps the pretrained
        statistics while their scale/shift still learn; on the demo's digits,
        freeze_depth=-2 went from 0.88 to 0.94 test accuracy.
        """,
    ),
    "max_length": (
        "int or None",
        "Truncation length in tokens (None: the backbone's own, at most 512).",
    ),
    "pooling": (
        '{"mean", "cls"} or None',
        "Token pooling (None: the backbone's own; mean for sentence-transformers).",
    ),
}


def format_default(value) -> str:
    """A default as numpydoc writes it: strings double-quoted, small floats as ``1e-4``.

    Examples
    --------
    >>> print(format_default("all"), format_default(5e-05), format_default(0.01))
    "all" 5e-5 0.01
    """
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, float) and value != 0 and abs(value) < 1e-3:
        mantissa, exponent = f"{value:e}".split("e")
        mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{int(exponent)}"
    return repr(value)


def parameters_section(init, *, overrides=None, indent="") -> str:
    """The numpydoc ``Parameters`` section of ``init`` (a class or its ``__init__``).

    One entry per signature parameter, in signature order, with the signature's default;
    the type and description come from ``overrides`` (name -> ``(type, description)``)
    or else :data:`PARAMETERS`. A parameter in neither raises ``KeyError`` naming it, so
    a new parameter cannot ship undocumented.
    """
    if isinstance(init, type):
        init = init.__init__
    overrides = dict(overrides or {})
    params = [
        p
        for p in inspect.signature(init).parameters.values()
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    unknown = [p.name for p in params if p.name not in overrides and p.name not in PARAMETERS]
    if unknown:
        raise KeyError(
            f"no shared description for {unknown}: add them to "
            "sktransfer._estimator.docs.PARAMETERS or pass them in overrides"
        )
    stale = sorted(set(overrides) - {p.name for p in params})
    if stale:
        raise KeyError(f"overrides name parameters the signature does not have: {stale}")
    lines = ["Parameters", "----------"]
    for p in params:
        type_, text = overrides.get(p.name, PARAMETERS.get(p.name))
        head = f"{p.name} : {type_}"
        if p.default is not p.empty:
            head += f", default={format_default(p.default)}"
        lines.append(head)
        body = inspect.cleandoc(text)  # (a first line flush with the quotes is fine)
        lines += ["    " + line if line else "" for line in body.splitlines()]
    return "\n".join(indent + line if line else "" for line in lines)


def document_parameters(cls=None, *, overrides=None):
    """Class decorator: replace the docstring line ``{parameters}`` with
    :func:`parameters_section` of the class, at that line's indentation.

    A docstring without the marker raises ``ValueError`` (the decorator would be a
    silent no-op); with ``python -OO`` (no docstrings) the class is returned as is.
    """

    def apply(klass):
        doc = klass.__doc__
        if doc is None:
            return klass
        match = re.search(r"^([ \t]*)\{parameters\}[ \t]*$", doc, flags=re.M)
        if match is None:
            raise ValueError(f"{klass.__name__}'s docstring has no '{{parameters}}' line")
        section = parameters_section(klass, overrides=overrides, indent=match.group(1))
        klass.__doc__ = doc[: match.start()] + section + doc[match.end() :]
        return klass

    return apply if cls is None else apply(cls)


def sections(doc) -> dict[str, str]:
    """``{title: body}`` of a numpydoc docstring (dedented); ``""`` is the text before
    the first section. A title is a line followed by a line of dashes as long."""
    lines = inspect.cleandoc(doc or "").splitlines()
    out, title, body = {}, "", []
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and set(nxt.strip()) == {"-"} and len(nxt.strip()) == len(line.strip()):
            out[title] = "\n".join(body).strip("\n")
            title, body = line.strip(), []
            i += 2
            continue
        body.append(line)
        i += 1
    out[title] = "\n".join(body).strip("\n")
    return out


def parameter_names(section_body) -> list[str]:
    """The names a numpydoc ``Parameters``/``Attributes`` section documents, in order
    (``a, b : int`` documents both ``a`` and ``b``)."""
    names = []
    for line in (section_body or "").splitlines():
        if not line.strip() or line[0].isspace():
            continue  # a description line
        head = line.split(" : ", 1)[0].rstrip(":").strip()
        names += [n.strip() for n in head.split(",") if n.strip()]
    return names


def documented(cls):
    """Class decorator: :func:`document_parameters` with the class's :data:`OVERRIDES`."""
    return document_parameters(cls, overrides=OVERRIDES.get(cls.__name__, {}))
