"""Segmenters by name: "classical" is built in; a learned segmenter loading local weights registers
itself with `register_segmenter`."""

from __future__ import annotations

from collections.abc import Callable

from editor.anatomy.classical import ClassicalSegmenter
from editor.anatomy.types import Segmenter

_REGISTRY: dict[str, Callable[[], Segmenter]] = {"classical": ClassicalSegmenter}


def register_segmenter(name: str, factory: Callable[[], Segmenter]) -> None:
    """Make a segmenter available by name (e.g. a learned one loading local weights)."""
    _REGISTRY[name] = factory


def get_segmenter(name: str = "classical") -> Segmenter:
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise ValueError(f"unknown segmenter {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None
