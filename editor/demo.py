"""The phantom demo model: where it ships and what it is.

A small InstructPix2Pix model trained only on synthetic chest phantoms (editor/training/phantoms/) with
the recipe in editor/training/demo_recipe.py (`x2x model build-demo`). It lets anyone see the editor
*work* without the gated InstructX2X weights: an instruction changes the right place of a phantom and the
guidance map sits there. It knows nothing about real radiographs.
"""

from __future__ import annotations

import json
from pathlib import Path

DEMO_MODEL_ID = "x2x-phantom-demo-v2"
DEMO_KIND = "phantom-demo"
# Trained on phantoms exposed through the display window, square, not equalised: this project's profile.
DEMO_INPUT_PROFILE = "windowed-aspect"
DEMO_WARNING = (
    "Phantom demo model: trained only on synthetic chest phantoms (no patient data). It knows only "
    "phantoms; on real radiographs its edits are meaningless. Every image it produces is synthetic; "
    "never for diagnosis."
)
SHIPPED_DIR = Path(__file__).resolve().parent / "assets" / "demo-model"


def is_demo_model(path: str | Path) -> bool:
    meta = Path(path) / "x2x_model.json"
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("kind") == DEMO_KIND
    except (OSError, ValueError):
        return False


def demo_model_path() -> Path | None:
    """The demo model shipped inside the package, or None when this install has none."""
    if (SHIPPED_DIR / "model_index.json").is_file() and is_demo_model(SHIPPED_DIR):
        return SHIPPED_DIR
    return None
