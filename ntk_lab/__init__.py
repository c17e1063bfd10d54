"""ntk_lab: how far is a finite network from its infinite-width limit?

Records the empirical neural tangent kernel (NTK) of a network during training, measures its
drift and its distance to the analytic infinite-width kernel Θ_∞, and sweeps width, depth,
learning rate and parameterization with Hydra. The layout of the package is described in
docs/architecture.md, the mathematical conventions in docs/conventions.md.

Modules that moved when the package was grouped by role keep their old import paths for one
release (``from ntk_lab import geometry`` still works, with a DeprecationWarning naming the
new path); :data:`MOVED_MODULES` lists them.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.1.0"

# old module path -> new module path (grouped by role in 0.2; the old paths go in 0.3)
MOVED_MODULES = {
    "ntk_lab.activations": "ntk_lab.layers.activations",
    "ntk_lab.build": "ntk_lab.experiment",
    "ntk_lab.checkpoint_geometry": "ntk_lab.measures.checkpoint_geometry",
    "ntk_lab.geometry": "ntk_lab.measures.geometry",
    "ntk_lab.metrics": "ntk_lab.measures.drift",
    "ntk_lab.hessian": "ntk_lab.measures.hessian",
    "ntk_lab.linearized": "ntk_lab.dynamics.linearized",
    "ntk_lab.kernels.flow": "ntk_lab.dynamics.kernel_flow",
    "ntk_lab.kernels.regression": "ntk_lab.dynamics.gradient_flow",
    "ntk_lab.features": "ntk_lab.models.layer_outputs",
    "ntk_lab.models.inspect": "ntk_lab.models.layer_groups",
    "ntk_lab.train": "ntk_lab.training.loop",
    "ntk_lab.optim": "ntk_lab.training.optimizers",
    "ntk_lab.losses": "ntk_lab.training.losses",
    "ntk_lab.preflight": "ntk_lab.training.preflight",
    "ntk_lab.storage": "ntk_lab.records.storage",
    "ntk_lab.analysis.launch": "ntk_lab.records.launch",
    "ntk_lab.datasets": "ntk_lab.data",
    "ntk_lab.datasets.cifar": "ntk_lab.data.cifar",
    "ntk_lab.datasets.idx": "ntk_lab.data.idx",
    "ntk_lab.datasets.files": "ntk_lab.data.image_files",
    "ntk_lab.datasets.images": "ntk_lab.data.images",
    "ntk_lab.datasets.synthetic": "ntk_lab.data.generated_files",
    "ntk_lab.study_cli": "ntk_lab.study",
}


def _warn_moved(old: str, new: str, stacklevel: int) -> None:
    warnings.warn(f"{old} moved to {new}; the old path goes in the next release",
                  DeprecationWarning, stacklevel=stacklevel + 1)


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module path as the module it moved to (the same module object)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        new = MOVED_MODULES[spec.name]
        _warn_moved(spec.name, new, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module):
        pass  # already executed under its new name


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _MovedModuleFinder())


def _moved_attribute(old_module: str, new_module: str, name: str):
    """A module's ``__getattr__`` for names that moved to ``new_module``."""
    module = importlib.import_module(new_module)
    if name.startswith("__") or not hasattr(module, name):
        raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
    _warn_moved(f"{old_module}.{name}", f"{new_module}.{name}", stacklevel=3)  # the importer
    return getattr(module, name)
