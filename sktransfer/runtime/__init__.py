"""How work runs: randomness, devices, precision, micro-batches and block runners.

Nothing here knows about training or estimators; :mod:`sktransfer.training` and
:mod:`sktransfer._estimator` build on it.
"""
