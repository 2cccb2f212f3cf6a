"""Synthetic frontal chest "phantoms" with findings that can be added or removed.

They stand in for MIMIC-CXR where no real data is reachable: the demo model is trained on them and the
semantic tests edit held-out ones. Each image is drawn in the PA display convention (the patient's left
on the image's RIGHT, head at the top): body, two dark lung fields, a bright heart lying mostly to the
image-right of the midline, mediastinum and spine, diaphragm domes with sharp costophrenic angles, rib
arcs, vascular markings fanning out from the hila, noise, and varied size / position / exposure.

Findings (each drawn analytically so the ground-truth change is known exactly):
  pleural effusion  at either base, small / moderate / large: fluid filling the costophrenic angle,
                    its upper edge a meniscus rising toward the lateral chest wall;
  cardiomegaly      the heart widened to a cardiothoracic ratio > 0.55 (normal 0.38-0.47);
  lung opacity      a focal blob in a given zone (upper / middle / lower) of one lung;
  pneumothorax      at an apex: a visceral pleural line with no lung markings beyond it.

A longitudinal pair is the same patient drawn twice (same anatomy, exposure and noise) differing only
in one finding, so the change mask |current - past| is the finding's own footprint. The instruction
comes from `editor.instructions` (the editor's own grammar) and is parsed back as a check.

The package: `patient.py` (who is drawn: anatomy, exposure, findings), `drawing.py` (the image, its
exposure and the change mask), `pairs.py` (longitudinal pairs and their instructions), `dataset.py`
(a dataset in the MIMIC-EDIT-INSTRUCTION layout).
"""

from editor.training.phantoms.dataset import CSV_COLUMNS, write_dataset
from editor.training.phantoms.drawing import change_mask, expose, region_masks, render, to_source_image
from editor.training.phantoms.pairs import PairSpec, PhantomPair, instruction_for, iter_pairs, make_pair, sample_pair
from editor.training.phantoms.patient import Findings, Patient, PatientSide, Severity, Zone, image_side

__all__ = [
    "CSV_COLUMNS",
    "Findings",
    "PairSpec",
    "Patient",
    "PatientSide",
    "PhantomPair",
    "Severity",
    "Zone",
    "change_mask",
    "expose",
    "image_side",
    "instruction_for",
    "iter_pairs",
    "make_pair",
    "region_masks",
    "render",
    "sample_pair",
    "to_source_image",
    "write_dataset",
]
