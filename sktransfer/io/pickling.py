"""Where joblib files written before the move of the pickling code name its entry point.

A pickled estimator records the function that rebuilds it by module path; files written
while it lived here say ``sktransfer.io.pickling._rebuild``. The code is in
:mod:`sktransfer._estimator.pickling`; this name stays so those files keep loading.
"""

from sktransfer._estimator.pickling import _rebuild

__all__ = ["_rebuild"]
