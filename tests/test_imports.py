"""Every module of the package imports, and importing one runs nothing (the import contracts
between the library and the applications are ``.importlinter``'s, checked by ``make test``)."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import balancemix_timm


def test_every_module_imports_and_runs_nothing(monkeypatch):
    """With an argument no parser accepts, a ``main()`` run at import time would exit."""
    monkeypatch.setattr(sys, "argv", ["balancemix", "--no-such-flag-anywhere"])
    names = sorted(m.name for m in pkgutil.walk_packages(balancemix_timm.__path__, "balancemix_timm."))
    assert len(names) > 50 and "balancemix_timm.engine" in names and "balancemix_timm.methods.standard" in names
    for name in names:
        importlib.import_module(name)
