"""Every module imports on its own, in any order: no import cycle waits for a first user.

(`sktransfer predict MODEL DIR` once failed in a fresh process: inputs/images ->
backbones -> cache -> cache/keys -> inputs/images.)
"""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import importlib, pkgutil, sys
import sktransfer
names = sorted(m.name for m in pkgutil.walk_packages(sktransfer.__path__, "sktransfer."))
bad = []
for name in names:
    for key in [k for k in sys.modules if k == "sktransfer" or k.startswith("sktransfer.")]:
        del sys.modules[key]  # torch & co. stay loaded: only sktransfer's own order matters
    try:
        importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - reported below
        bad.append(f"{name}: {type(exc).__name__}: {exc}")
print(len(names))
print("\\n".join(bad))
"""


def test_every_module_imports_first():
    proc = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    count, *bad = proc.stdout.strip().splitlines()
    assert int(count) > 40  # the walk found the package's modules
    assert bad == [], "\n".join(bad)
