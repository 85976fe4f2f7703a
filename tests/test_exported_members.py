"""Every name a package root promises in __all__ exists, and nothing private is exported."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("module_name", ["eventstore", "tidings", "tidings.devservices", "workers"])
def test_all_names_resolve(module_name: str) -> None:
    module = importlib.import_module(module_name)
    exported = module.__all__
    assert len(exported) == len(set(exported)), "duplicates in __all__"
    for name in exported:
        assert hasattr(module, name), f"{module_name}.{name} is in __all__ but missing"
        assert not name.startswith("_") or name == "__version__"
