"""Every public name the README and docs/ use imports from where they say, and the module
paths from before the package was grouped by role still import — as the same objects — with a
DeprecationWarning naming the new path."""

from __future__ import annotations

import importlib
import warnings

import pytest

import ntk_lab

# (module, names) as the README's library section, docs/architecture.md and the command lines
# use them.
PUBLIC = [
    ("ntk_lab.models", ["MLP", "CNN", "ResMLP", "Transformer", "ScaledOutput", "parameter_layers",
                        "trainable_layers", "kernel_layers", "build_network", "NetworkSpec"]),
    ("ntk_lab.models.serial", ["Serial", "Dense", "Conv", "SelfAttention", "Residual", "Relu",
                               "Nonlinearity", "LayerNorm", "TokenReadout", "GlobalAvgPool",
                               "Flatten", "PatchTokens"]),
    ("ntk_lab.kernels", ["empirical_ntk", "empirical_ntk_layers", "infinite_width_kernels",
                         "jacobian_change", "METHODS", "monte_carlo_kernels",
                         "nngp_finite_width_corrections"]),
    ("ntk_lab.measures.kernel_curvature", ["top_kernel_eigenvalue", "critical_learning_rate"]),
    ("ntk_lab.training.lr_units", ["absolute_learning_rate", "LR_UNITS"]),
    ("ntk_lab.training.limit_source", ["LimitSource", "limit_kernels"]),
    ("ntk_lab.analysis.catapult", ["eta_max_table", "phase_fits"]),
    ("ntk_lab.analysis.lr_transfer", ["optima", "transfer_fits", "optimum"]),
    ("ntk_lab.kernels.network_limit", ["infinite_width_of", "limit_unavailable", "NO_LIMIT_REASON"]),
    ("ntk_lab.layers", ["Dense", "Conv", "Nonlinearity", "GlobalAvgPool", "Flatten", "Residual",
                        "SelfAttention", "LayerNorm", "TokenReadout", "PatchTokens", "NoClosedForm",
                        "KernelState", "PARAMETERIZATIONS", "layer_scales"]),
    ("ntk_lab.layers.activations", ["ACTIVATIONS", "get_activation"]),
    ("ntk_lab.measures.geometry", ["centered_alignment", "spectrum", "effective_rank",
                                   "top_eig_share", "eigenspace_overlap", "kernel_velocity"]),
    ("ntk_lab.measures.drift", ["kappa", "kernel_distance", "ntk_err_inf", "param_change"]),
    ("ntk_lab.measures.hessian", ["kappa_hessian"]),
    ("ntk_lab.studies.fluctuations", ["ntk_diagonal_samples", "moment_ratio", "measure_grid"]),
    ("ntk_lab.studies.coord_check", ["run_coord_check", "fit_slopes"]),
    ("ntk_lab.data", ["Dataset", "DataError", "make_dataset", "DATASETS"]),
    ("ntk_lab.data.images", ["image_dataset"]),
    ("ntk_lab.dynamics.gradient_flow", ["GradientFlowPredictor", "kernel_regression"]),
    ("ntk_lab.dynamics.kernel_flow", ["KernelFlow"]),
    ("ntk_lab.dynamics.linearized", ["LinearizedModel"]),
    ("ntk_lab.training.loop", ["train", "TrainSettings", "checkpoint_steps"]),
    ("ntk_lab.config", ["validate", "RunConfig", "ConfigError"]),
    ("ntk_lab.experiment", ["run_experiment"]),
    ("ntk_lab.records", ["read_run", "find_runs", "load_kernels", "METRIC_COLUMNS"]),
    ("ntk_lab.analysis", ["analyze_sweep", "collect_sweep", "fit_sweep", "fit_power_law"]),
    ("ntk_lab.analysis.render", ["main"]),
    ("ntk_lab.run", ["main"]),
    ("ntk_lab.analyze", ["main"]),
    ("ntk_lab.coord_check", ["main"]),
    ("ntk_lab.fluctuations", ["main"]),
]


@pytest.mark.parametrize("module,names", PUBLIC, ids=[m for m, _ in PUBLIC])
def test_public_names_import(module, names):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the new paths never warn
        loaded = importlib.import_module(module)
        for name in names:
            assert getattr(loaded, name) is not None, f"{module}.{name}"


@pytest.mark.parametrize("old,new", sorted(ntk_lab.MOVED_MODULES.items()))
def test_old_module_paths_still_import_with_a_warning(old, new):
    import sys

    sys.modules.pop(old, None)  # imported by an earlier test: import it afresh
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)


@pytest.mark.parametrize("old,name,new", [
    ("ntk_lab.fluctuations", "moment_ratio", "ntk_lab.studies.fluctuations"),
    ("ntk_lab.fluctuations", "ntk_diagonal_samples", "ntk_lab.studies.fluctuations"),
    ("ntk_lab.coord_check", "run_coord_check", "ntk_lab.studies.coord_check"),
    ("ntk_lab.models", "infinite_width_of", "ntk_lab.kernels.network_limit"),
])
def test_moved_names_still_import_with_a_warning(old, name, new):
    with pytest.warns(DeprecationWarning, match=rf"{old}\.{name} moved to {new}\.{name}"):
        value = getattr(importlib.import_module(old), name)
    assert value is getattr(importlib.import_module(new), name)


def test_an_unknown_name_is_still_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        importlib.import_module("ntk_lab.fluctuations").no_such_name
    with pytest.raises(ImportError):
        from ntk_lab.models import no_such_name  # noqa: F401


def test_the_old_geometry_import_of_the_readme_works():
    import sys

    sys.modules.pop("ntk_lab.geometry", None)  # an earlier test may have imported it
    if "geometry" in vars(ntk_lab):
        delattr(ntk_lab, "geometry")
    with pytest.warns(DeprecationWarning, match="ntk_lab.measures.geometry"):
        exec("from ntk_lab import geometry as g; assert g.spectrum", {})
