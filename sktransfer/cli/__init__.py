"""The ``sktransfer`` command line (``[project.scripts]``: ``sktransfer = sktransfer.cli:main``).

One module per concern: :mod:`.commands` (the parser, ``predict``, ``backbones``, ``demo``
and :func:`main`), :mod:`.errors` (exit statuses, one line per failure), :mod:`.output`
(``-o`` and standard output: atomic, never a file the command reads, signals),
:mod:`.model` (MODEL and threads), :mod:`.inputs` (what an INPUT names), :mod:`.sources`
(lines, CSV and Parquet) and :mod:`.scoring` (batches through the model). The library never
imports this package.
"""

from sktransfer.cli.commands import main

__all__ = ["main"]
