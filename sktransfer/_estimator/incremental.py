"""``partial_fit``: one epoch per call, as ``MLPClassifier`` does.

The first call (or the first after ``fit`` or a load) sets the run up: the classes
(``classes=`` for single-label ``y``, as scikit-learn's incremental classifiers ask), the
target scaling of a regressor, the backbone, the network (the fitted one when there is
one; else a new one with its initial head: the probe on this call's data when every class
is in it, a seeded random head otherwise), and an
:class:`~sktransfer.training.incremental.IncrementalTrainer`. Every call then trains one
epoch on its own data: the trainer keeps the optimizer, the data order, the schedule and
early stopping between calls, and activations below the frozen boundary come from the
cache like ``fit``'s. ``freeze_depth="all"`` trains the linear head by the optimizer (the
exact solve is ``fit``'s).

Not with ``objective="contrastive"``, ``adapter="lora"``, ``unfreeze_schedule``,
``lr="auto"`` (a ValueError says so). The trainer is not pickled or saved: a loaded model's
first ``partial_fit`` starts a new optimizer and schedule from its weights.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sktransfer._estimator.params import check_finite_weights, check_weights
from sktransfer.runtime.batches import Collate
from sktransfer.training.incremental import IncrementalTrainer
from sktransfer.training.lora import count_trainable
from sktransfer.training.regularization import make_regularizer

_UNSUPPORTED = (  # (parameter, its neutral value)
    ("objective", "cross_entropy"),
    ("adapter", None),
    ("unfreeze_schedule", None),
)


class IncrementalMixin:
    """``partial_fit`` over the skeleton's fit steps (:mod:`.base`, :mod:`.fit_paths`)."""

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """Train one epoch on ``X, y``; the first call sets the model up.

        Parameters
        ----------
        X, y, sample_weight
            As for ``fit``.
        classes : array-like of shape (n_classes,), default=None
            Every class of the run; required on the first call for single-label ``y``
            (later calls may hold any subset), ignored afterwards.

        Returns
        -------
        self
        """
        trainer = getattr(self, "_incremental_", None)
        try:
            if trainer is None:
                trainer, state = self._start_incremental(X, y, classes, sample_weight)
            else:
                self._validate_params()
                state = self._next_state(trainer, X, y, sample_weight)
            state.split = self._split(state.y, state.seed)
            _, train, valid, _ = self._phase_data(trainer.net, state, state.n_frozen)
            with self._generators(dataclasses.replace(state, seed=state.seed + trainer.epochs)):
                records = trainer.epoch(train, valid)
            check_finite_weights(trainer.net)
        except BaseException:  # a failed call leaves an unfitted estimator, as fit does
            self._reset()
            raise
        history = list(getattr(self, "history_", [])) + records
        info = {"n_trainable_params_": count_trainable(trainer.net), "lr_": float(self.lr)}
        trainer.net.eval()
        self._set_fitted(state, trainer.net, history, info)
        self._incremental_ = trainer
        self._incremental_state_ = dataclasses.replace(state, items=None, y=None, split=None)
        return self

    def _start_incremental(self, X, y, classes, sample_weight):
        warm = self._warm_start_from()  # a fitted model goes on from its weights
        previous = warm[1] if warm is not None else None
        history = list(getattr(self, "history_", [])) if warm is not None else []
        n_features = getattr(self, "n_features_in_", None) if warm is not None else None
        self._reset()
        self._validate_params()
        for name, neutral in _UNSUPPORTED:
            if getattr(self, name, neutral) != neutral:
                raise ValueError(f"partial_fit does not support {name}={getattr(self, name)!r}")
        if self.lr == "auto":
            raise ValueError("partial_fit needs a float lr, not 'auto'")
        target = self._target_for(y)
        if previous is None and target.name == "single_label":
            if classes is None:
                raise ValueError(
                    "classes must be passed on the first call to partial_fit (every class "
                    "of the run, as scikit-learn's incremental classifiers ask)"
                )
            previous = {"classes_": np.unique(np.asarray(classes))}
        state = self._fit_state(X, y, sample_weight, previous=previous, target=target, stacklevel=5)
        if n_features is not None and getattr(self, "n_features_in_", None) != n_features:
            raise ValueError(
                f"X has {getattr(self, 'n_features_in_', None)} features, but "
                f"{type(self).__name__} is expecting {n_features} features as input"
            )
        self._world(state, "partial_fit")
        state.split = self._split(state.y, state.seed)
        if warm is not None:
            state.warm_net = warm[0]
            net, _ = self._start_net(state)
        else:
            net = self._new_net(state)
            train_idx = state.split[0]
            seen = np.unique(state.y.values[train_idx]) if state.y.values.ndim == 1 else None
            # the probe needs every class in this call's data; else a seeded random head
            every_class = state.target.name != "single_label" or len(seen) == state.y.n_outputs
            probe = self.head_init == "probe" and every_class
            net.head = self._initial_head(net, state, train_idx, probe=probe).to(state.device)
        net.set_frozen(state.n_frozen)
        reg = make_regularizer(
            self.regularizer, self.regularizer_strength, net,
            l2sp_alpha=self.l2sp_alpha, l2sp_beta=self.l2sp_beta,
        )  # fmt: skip
        # the block the training inputs enter at (as _phase_data decides; no data built here)
        start = state.n_frozen if self._use_boundary_cache(state.n_frozen) else 0
        collate = Collate(self._suffix_collate(state.kind, state.prep, start, state.n_blocks))
        cfg = self._train_config(state, regularizer=reg)
        trainer = IncrementalTrainer(net, collate, cfg, start=start)
        self.history_ = history
        return trainer, state

    def _next_state(self, trainer, X, y, sample_weight):
        """This call's FitState: its data, encoded with the first call's classes/scaling."""
        template = self._incremental_state_
        keys = ("classes_", "y_mean_", "y_scale_", "y_ndim_")
        previous = {k: getattr(self, k) for k in keys if hasattr(self, k)}
        items, kind = self._check_X(X, fitting=False)  # (the first call's kind and features)
        if kind != template.kind:
            raise ValueError(f"partial_fit was started on {template.kind} input, got {kind} input")
        sw = check_weights(sample_weight, len(items))
        encoded = template.target.encode(self, y, len(items), sw, previous=previous)
        if encoded.weights is not None:
            sw = sw * encoded.weights
        return dataclasses.replace(template, items=items, y=encoded, sample_weight=sw)
