"""
The one way tests load deskfleet's code without Salt's loader (functional tests use Salt's
own loader: ``salt.loader`` / ``configure_loader_modules``).

* ``_utils`` and ``_beacons`` are importable by plain name (as Salt's loader makes them):
  ``add_code_paths()`` runs once from ``tests/conftest.py``.
* Anything else (``_modules``, ``_runners``, ``_engines``, ``tools``) is a file, not a package:
  ``load("_modules/host_net.py")`` returns it as a plain module.
"""

import importlib.util
import pathlib
import sys

CHECKOUT = pathlib.Path(__file__).resolve().parents[2]
IMPORTABLE = ("_utils", "_beacons")


def add_code_paths():
    """Make the checkout and the plain-import folders (``_utils``, ``_beacons``) importable."""
    for path in [str(CHECKOUT / sub) for sub in IMPORTABLE] + [str(CHECKOUT)]:
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)  # the checkout first, then _beacons, then _utils


def load(relpath, name=None):
    """The file ``relpath`` (relative to the checkout) as a fresh module named ``name`` (default: its stem)."""
    path = CHECKOUT / relpath
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
