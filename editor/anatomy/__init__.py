"""Per-image chest anatomy without downloaded weights: lung fields, zones, angles, apices, hila, heart.

The package's parts, in the order the classical segmenter uses them:

* `types.py` -- `Anatomy` (named boolean masks + quality notes), the `Segmenter` protocol, image sides;
* `morphology.py` -- the mask operations every step shares (Otsu, disk dilation / erosion, filled hull);
* `classical.py` -- `ClassicalSegmenter`: threshold, components and shape rules find the two lung fields;
* `assembly.py` -- every named region derived from two lung fields (`assemble_anatomy`), and
  `template_anatomy`, the geometric standard PA chest used when no lung fields are plausible;
* `lung_parts.py` -- zones, apex, costophrenic angle, hilum, lateral margin and hemithorax of one lung;
* `heart.py` -- the heart and the mediastinum between the lung fields;
* `registry.py` -- segmenters by name (`get_segmenter`, `register_segmenter`).

Masks are keyed by *image* sides (the segmenter does not know the patient's orientation;
editor/regions.py maps patient sides through `Orientation`). A learned segmenter with local weights
can replace the classical one: implement `Segmenter` and register it with `register_segmenter`.
"""

from editor.anatomy.assembly import template_anatomy
from editor.anatomy.classical import ClassicalSegmenter
from editor.anatomy.morphology import dilate, erode
from editor.anatomy.registry import get_segmenter, register_segmenter
from editor.anatomy.types import IMAGE_SIDES, Anatomy, Segmenter

__all__ = [
    "IMAGE_SIDES",
    "Anatomy",
    "ClassicalSegmenter",
    "Segmenter",
    "dilate",
    "erode",
    "get_segmenter",
    "register_segmenter",
    "template_anatomy",
]
