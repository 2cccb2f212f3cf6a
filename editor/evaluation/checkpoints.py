"""Read tensors out of PyTorch weight files without importing the classes they were pickled with.

torchxrayvision's pathology files (`*-densenet121-*-best.pt`) are whole pickled `nn.Module` objects
(torchxrayvision loads them with `torch.load(weights_only=False)` and keeps only `.state_dict()`);
unpickling them normally needs torchxrayvision / torchvision importable and would run whatever the
pickle asks for. Here the pickle runs through a restricted unpickler:

* the few torch functions that rebuild tensors and parameters, `collections.OrderedDict` and
  `set` / `frozenset` are the real ones;
* every other global (the module classes, and anything a hostile file names, `os.system` included)
  becomes an inert placeholder class: calling it only records its arguments, nothing executes;
* the placeholder tree of modules is then walked like `nn.Module.state_dict()` (`_parameters`,
  persistent `_buffers`, `_modules`, dotted names).

A plain state dict (the race model's file, saved from an `nn.DataParallel`, keys `module.*`) goes
through the same path. The result is a flat `{name: tensor}` dict with any `module.` prefix removed.
"""

from __future__ import annotations

import collections
import pickle
import types
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "load_state_dict", "read_tensors"]

_REAL_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch", "Size"): torch.Size,
    ("_codecs", "encode"): lambda text, encoding="latin1": _latin1_bytes(text, encoding),  # protocol-2 bytes
}
# Protocol 2 writes Python 3 names in their Python 2 spelling (pickle's fix_imports).
_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


def _latin1_bytes(text: str, encoding: str) -> bytes:
    if encoding.replace("-", "").lower() != "latin1":
        raise pickle.UnpicklingError(f"refusing codec {encoding!r} in a weight file")
    return text.encode("latin1")


class CheckpointError(ValueError):
    """The file holds no usable weights (or not the ones expected)."""


class Placeholder:
    """Stands in for any pickled class or callable: records what the pickle gave it, runs nothing."""

    dump_patches = False  # read by torch's legacy loader when the saved class source differs
    _pickled_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        obj = object.__new__(cls)
        obj.__dict__["_pickled_args"] = args
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE calls the "class" with its args
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_pickled_state"] = state


def _placeholder_for(module: str, name: str) -> type[Placeholder]:
    return type(name if name.isidentifier() else "Placeholder", (Placeholder,),
                {"_pickled_name": f"{module}.{name}", "__module__": __name__})


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        real = _REAL_GLOBALS.get((_PY2_MODULES.get(module, module), name))
        if real is not None:
            return real
        return _placeholder_for(module, name)


# torch.load(pickle_module=...) wants a module-like object with `Unpickler` and `load`.
_restricted_pickle = types.ModuleType("x2x_restricted_pickle")
_restricted_pickle.Unpickler = _RestrictedUnpickler  # type: ignore[attr-defined]
_restricted_pickle.load = lambda f, **kw: _RestrictedUnpickler(f, **kw).load()  # type: ignore[attr-defined]
_restricted_pickle.__dict__["UnpicklingError"] = pickle.UnpicklingError


def read_tensors(path: str | Path) -> Any:
    """The unpickled object of a torch file, with every foreign class replaced by a `Placeholder`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SourceChangeWarning from the legacy format: expected here
        try:
            return torch.load(str(path), map_location="cpu", pickle_module=_restricted_pickle, weights_only=False)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError) as exc:
            raise CheckpointError(f"{path}: not a readable PyTorch weight file ({type(exc).__name__}: {exc})") from exc


def _module_tensors(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    state = obj.__dict__ if isinstance(obj, Placeholder) else {}
    skip = state.get("_non_persistent_buffers_set") or set()
    for kind in ("_parameters", "_buffers"):
        for name, value in (state.get(kind) or {}).items():
            if isinstance(value, torch.Tensor) and not (kind == "_buffers" and name in skip):
                out[prefix + name] = value.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            _module_tensors(child, f"{prefix}{name}.", out)


def _strip(keys: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if keys and all(k.startswith(prefix) for k in keys):
        return {k[len(prefix):]: v for k, v in keys.items()}
    return keys


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Flat {name: tensor} of a state-dict file or of a whole pickled module (DataParallel prefix removed)."""
    obj = read_tensors(path)
    for key in ("state_dict", "model_state_dict", "model"):  # common checkpoint wrappers
        if isinstance(obj, dict) and key in obj and not isinstance(obj[key], torch.Tensor):
            obj = obj[key]
            break
    tensors: dict[str, torch.Tensor] = {}
    if isinstance(obj, dict):
        tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    elif isinstance(obj, Placeholder):
        _module_tensors(obj, "", tensors)
    if not tensors:
        kind = type(obj)._pickled_name if isinstance(obj, Placeholder) else type(obj).__name__
        raise CheckpointError(f"{path}: no weights found (the file holds a {kind})")
    return _strip(tensors, "module.")


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Strict load; only BatchNorm's `num_batches_tracked` (absent from pre-0.4.1 files) may be missing, and
    only torchxrayvision's `op_threshs` buffer (thresholds, applied here from xrv_weights.py) may be extra."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected and k != "op_threshs"]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}" for k in expected
             if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        def head(items: list[str]) -> str:
            return ", ".join(items[:4]) + (f" (+{len(items) - 4} more)" if len(items) > 4 else "")

        parts = [f"missing {head(missing)}" if missing else "", f"unexpected {head(unexpected)}" if unexpected else "",
                 f"wrong shape {head(wrong)}" if wrong else ""]
        raise CheckpointError(f"{what}: weights do not fit the architecture: " + "; ".join(p for p in parts if p))
    merged = {k: state.get(k, v) for k, v in expected.items()}
    module.load_state_dict(merged, strict=True)
