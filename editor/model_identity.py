"""Which model a path holds, without building any torch module: `describe_model` reads `x2x_model.json`
(model id, kind, resolution, input profile; the folder / file name and the component configs where it
says nothing) and `weights_hash` hashes the weight files (sha256 over their relative names and bytes,
cached by path, mtime and size), so every result can be traced to the exact weights.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editor.profiles import get_profile

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
SINGLE_FILE_SUFFIXES = (".ckpt", ".safetensors")
DEFAULT_RESOLUTION = 512  # InstructX2X inference resolution


class ModelLoadError(RuntimeError):
    """The model path is not a loadable local model (message says what to fix)."""


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    weights_hash: str
    resolution: int
    kind: str  # "diffusers" | "single-file" | x2x_model.json's kind (e.g. "fixture")
    input_profile: str = get_profile(None).name  # x2x_model.json's input_profile; undeclared: research


def _sidecar(path: Path) -> dict[str, Any]:
    folder = path if path.is_dir() else path.parent
    candidates = [folder / "x2x_model.json"]
    if path.is_file():
        candidates.insert(0, path.with_name(path.stem + ".x2x_model.json"))
    for candidate in candidates:
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise ModelLoadError(f"{candidate} is not valid JSON: {exc}") from exc
            if isinstance(data, dict):
                return data
    return {}


def _weight_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


_hash_cache: dict[tuple[Any, ...], str] = {}
_hash_lock = threading.Lock()


def weights_hash(path: str | Path) -> str:
    """sha256 over (relative name, bytes) of every weight file; cached by (path, mtime, size) of each."""
    root = Path(path).resolve()
    files = _weight_files(root)
    if not files:
        raise ModelLoadError(f"no weight files ({', '.join(WEIGHT_SUFFIXES)}) under {root}")
    base = root.parent if root.is_file() else root
    stats = tuple((str(f.relative_to(base)), f.stat().st_mtime_ns, f.stat().st_size) for f in files)
    key = (str(root), stats)
    with _hash_lock:
        cached = _hash_cache.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for f in files:
        digest.update(str(f.relative_to(base)).encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    value = "sha256:" + digest.hexdigest()
    with _hash_lock:
        _hash_cache[key] = value
    return value


def _folder_resolution(folder: Path) -> int | None:
    """sample_size x 2^(VAE blocks - 1), read from the component configs (no torch)."""
    try:
        unet_cfg = json.loads((folder / "unet" / "config.json").read_text())
        vae_cfg = json.loads((folder / "vae" / "config.json").read_text())
        return int(unet_cfg["sample_size"]) * 2 ** (len(vae_cfg["block_out_channels"]) - 1)
    except (OSError, KeyError, TypeError, ValueError):
        return None


def _declared_profile(side: dict[str, Any], where: Path) -> str:
    try:
        return get_profile(side.get("input_profile")).name
    except ValueError as exc:
        raise ModelLoadError(f"{where}: {exc}") from exc


def declared_input_profile(path: str | Path) -> str:
    """The input profile a model folder or file declares (research when it declares none), read from
    x2x_model.json alone (no weights hashed)."""
    p = Path(path)
    return _declared_profile(_sidecar(p), p)


def describe_model(path: str | Path) -> ModelInfo:
    """Model id, weights hash, resolution, kind and input profile, cheaply (reads JSON and hashes
    weights, cached)."""
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model path {p} does not exist")
    side = _sidecar(p)
    if p.is_dir():
        if not (p / "model_index.json").is_file():
            raise ModelLoadError(f"{p} is not a diffusers model folder (no model_index.json)")
        kind = str(side.get("kind", "diffusers"))
        resolution = int(side.get("resolution") or _folder_resolution(p) or DEFAULT_RESOLUTION)
        default_id = p.resolve().name
    else:
        if not p.name.endswith(SINGLE_FILE_SUFFIXES):
            raise ModelLoadError(f"{p}: a single-file model must be .ckpt or .safetensors")
        kind = str(side.get("kind", "single-file"))
        resolution = int(side.get("resolution") or DEFAULT_RESOLUTION)
        default_id = p.stem
    model_id = str(side.get("model_id") or default_id)
    return ModelInfo(model_id=model_id, weights_hash=weights_hash(p), resolution=resolution, kind=kind,
                     input_profile=_declared_profile(side, p))
