"""sktransfer benchmarks: real-data loaders (``datasets``), a measurement harness (``_harness``)
and a runner.

Run ``python -m benchmarks --quick`` (see ``benchmarks/README.md``). This package never needs
``sktransfer`` to import; only the ``bench_*`` modules that measure it do.
"""
