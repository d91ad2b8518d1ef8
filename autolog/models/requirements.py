"""A saved model's pip requirements, read from the installed distributions.

MLflow infers them by loading the model in a subprocess and recording what it imports:
seconds per model. The packages a flavor needs are known, so their installed versions
are read from ``importlib.metadata`` instead (milliseconds, on the saver's thread).
"""

from __future__ import annotations

import functools
import importlib.metadata
import sys
from collections.abc import Iterable

# The distribution MLflow's loaders ship in, in order of preference: the full package,
# else the skinny one (autolog's own dependency), named "mlflow" as MLflow names it.
_MLFLOW_DISTRIBUTIONS = ("mlflow", "mlflow-skinny")


@functools.cache
def _distributions_of() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _version(distribution: str) -> str | None:
    try:
        version = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    # A local label (torch's "+cpu") names a build no index serves: pin the release.
    return version.partition("+")[0]


def mlflow_requirement() -> str | None:
    for distribution in _MLFLOW_DISTRIBUTIONS:
        version = _version(distribution)
        if version is not None:
            return f"mlflow=={version}"
    return None


def pinned(modules: Iterable[str]) -> list[str]:
    """``dist==version`` for the distributions that provide the top-level ``modules``
    (``sklearn`` → ``scikit-learn==1.9.1``), MLflow's first; modules of the standard library
    or of no installed distribution (the user's script) are left out."""
    requirements = [line for line in (mlflow_requirement(),) if line]
    seen = {"mlflow", "mlflow-skinny"}
    for module in modules:
        top = module.partition(".")[0]
        if top in sys.stdlib_module_names or top == "__main__":
            continue
        for distribution in _distributions_of().get(top, ()):
            version = _version(distribution)
            if distribution.lower() not in seen and version is not None:
                seen.add(distribution.lower())
                requirements.append(f"{distribution}=={version}")
    return requirements
