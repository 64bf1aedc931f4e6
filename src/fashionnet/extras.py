"""Which optional extra each command needs, checked before any work (and without importing).

A runtime-only install (NumPy + Pillow + onnxruntime) cannot train; rather than a
``ModuleNotFoundError`` traceback halfway through, every command checks first and names the
``pip install`` line that fixes it.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from fashionnet.errors import FashionNetError

#: Keras backends and the module each needs.
_BACKEND_MODULES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


def missing(*modules: str) -> list[str]:
    """The modules among ``modules`` that are not installed (found without importing them)."""
    out = []
    for name in modules:
        alternatives = name.split("|")  # "a|b": either will do
        if not any(_installed(a) for a in alternatives):
            out.append(alternatives[0])
    return out


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


#: What `fashionnet doctor` needs (the ``doctor`` extra): cleanlab's Datalab (with its
#: ``datasets`` dependency), cleanvision, scikit-learn for the cross-validated probabilities.
DOCTOR_MODULES = ("cleanlab", "cleanvision", "sklearn", "datasets")


def require_doctor(what: str) -> None:
    require(what, "doctor", *DOCTOR_MODULES)


def keras_backend() -> str:
    """The Keras backend that would be used: $KERAS_BACKEND, else keras.json, else tensorflow."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    try:
        return str(json.loads((home / "keras.json").read_text()).get("backend", "tensorflow"))
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def keras_modules() -> list[str]:
    return ["keras", _BACKEND_MODULES.get(keras_backend(), "tensorflow")]


def require(what: str, extra: str, *modules: str) -> None:
    """Raise a one-line FashionNetError naming the extra when a module is missing."""
    absent = missing(*modules)
    if absent:
        verb = "is" if len(absent) == 1 else "are"
        raise FashionNetError(f"{what} needs {', '.join(absent)}, which {verb} not installed: "
                              f'pip install "fashionnet[{extra}]"')


def require_training(what: str) -> None:
    require(what, "train", *keras_modules(), "matplotlib")


def import_keras_quietly() -> None:
    """Import Keras (and TensorFlow) with the C++ start-up lines silenced.

    TensorFlow's absl logging prints "All log messages before absl::InitializeLog()" and a
    oneDNN notice to file descriptor 2 at import, whatever TF_CPP_MIN_LOG_LEVEL says; a user
    of the CLI cannot act on them. Python-level errors still surface as exceptions.
    """
    import sys

    if "keras" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (some embedded interpreters)
        import keras  # noqa: F401
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        import keras  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def require_cluster(what: str) -> None:
    """Ray (Data and Train) and its Arrow/pandas stack: only the cluster commands need them."""
    require(what, "cluster", "ray", "pyarrow", "pandas")
