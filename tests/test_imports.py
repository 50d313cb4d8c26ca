"""Every module of the library and of the applications imports, and importing one runs nothing
(the import contracts between the two are ``.importlinter``'s, checked by ``make test``)."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import balancemix_apps
import balancemix_timm


def test_every_module_imports_and_runs_nothing(monkeypatch):
    """With an argument no parser accepts, a ``main()`` run at import time would exit."""
    monkeypatch.setattr(sys, "argv", ["balancemix", "--no-such-flag-anywhere"])
    names = sorted(m.name for pkg in (balancemix_timm, balancemix_apps)
                   for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."))
    assert len(names) > 50 and "balancemix_timm.engine" in names and "balancemix_apps.methods.standard" in names
    for name in names:
        importlib.import_module(name)
