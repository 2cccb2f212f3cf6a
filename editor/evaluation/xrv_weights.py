"""What torchxrayvision's released weight files are called, what they predict, and their operating points.

These are facts about the files torchxrayvision downloads into `~/.torchxrayvision/models_data/` (from its
GitHub release "v1", `https://github.com/mlmed/torchxrayvision/releases/download/v1/<file>`), taken from
torchxrayvision 1.5.7 (`models.model_urls`, `baseline_models.emory_hiti`, `baseline_models.riken`). The
label order is the output order of every DenseNet file (18 outputs; an empty label = not trained).
`op_threshs` are the per-label operating points torchxrayvision applies by default after the sigmoid
(`op_norm`: a probability equal to the threshold maps to 0.5), so "positive" means output >= 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

NAN = float("nan")

XRV_LABELS: tuple[str, ...] = (
    "Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema", "Fibrosis",
    "Effusion", "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule", "Mass", "Hernia", "Lung Lesion",
    "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum",
)

RELEASE_URL = "https://github.com/mlmed/torchxrayvision/releases/download/v1/"


@dataclass(frozen=True)
class PathologyWeights:
    name: str  # torchxrayvision's weights name, e.g. "densenet121-res224-all"
    filename: str
    trained: tuple[bool, ...]  # which of XRV_LABELS this file was trained on
    op_threshs: tuple[float, ...]
    resolution: int = 224


def _trained(*absent: int) -> tuple[bool, ...]:
    return tuple(i not in absent for i in range(len(XRV_LABELS)))


_CHEX_LIKE = (2, 5, 6, 9, 11, 12, 13)  # no Infiltration, Emphysema, Fibrosis, Pleural_Thickening, Nodule, Mass, Hernia

PATHOLOGY_WEIGHTS: dict[str, PathologyWeights] = {w.name: w for w in (
    PathologyWeights(
        "densenet121-res224-all",
        "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        _trained(),
        (0.07422872, 0.038290843, 0.09814756, 0.0098118475, 0.023601074, 0.0022490358, 0.010060724, 0.103246614,
         0.056810737, 0.026791653, 0.050318155, 0.023985857, 0.01939503, 0.042889766, 0.053369623, 0.035975814,
         0.20204692, 0.05015312)),
    PathologyWeights(
        "densenet121-res224-nih", "nih-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        _trained(14, 15, 16, 17),
        (0.039117552, 0.0034529066, 0.11396341, 0.0057298196, 0.00045666535, 0.0018880932, 0.012037827,
         0.038744126, 0.0037213727, 0.014730946, 0.016149804, 0.054241467, 0.037198864, 0.0004403434, NAN, NAN,
         NAN, NAN)),
    PathologyWeights(
        "densenet121-res224-pc", "pc-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        _trained(14, 16, 17),
        (0.031012505, 0.013347598, 0.081435576, 0.001262615, 0.002587246, 0.0035944257, 0.0023071, 0.055412333,
         0.044385884, 0.042766232, 0.043258056, 0.037629247, 0.005658899, 0.0091741895, NAN, 0.026507627, NAN,
         NAN)),
    PathologyWeights(
        "densenet121-res224-chex", "chex-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        _trained(*_CHEX_LIKE),
        (0.1988969, 0.05710573, NAN, 0.0531293, 0.1435217, NAN, NAN, 0.27212676, 0.07749717, NAN, 0.19712369, NAN,
         NAN, NAN, 0.09932402, 0.09273402, 0.3270967, 0.10888247)),
    PathologyWeights(
        "densenet121-res224-rsna", "kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        tuple(i in (8, 16) for i in range(len(XRV_LABELS))),
        tuple(0.13486601 if i == 8 else 0.13511065 if i == 16 else NAN for i in range(len(XRV_LABELS)))),
    PathologyWeights(
        "densenet121-res224-mimic_nb", "mimic_nb-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        _trained(*_CHEX_LIKE),
        (0.08558747, 0.011884617, NAN, 0.0040595434, 0.010733786, NAN, NAN, 0.118761964, 0.022924708, NAN,
         0.06358637, NAN, NAN, NAN, 0.022143636, 0.017476924, 0.1258702, 0.014020768)),
    PathologyWeights(
        "densenet121-res224-mimic_ch", "mimic_ch-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt",
        _trained(*_CHEX_LIKE),
        (0.09121389, 0.010573786, NAN, 0.005023008, 0.003698257, NAN, NAN, 0.08001232, 0.037242252, NAN,
         0.05006329, NAN, NAN, NAN, 0.019866971, 0.03823637, 0.11303808, 0.0069147074)),
)}
DEFAULT_PATHOLOGY_WEIGHTS = "densenet121-res224-all"

# Race: Gichoya et al. 2022 (Emory HITI), ResNet-34, MIMIC-CXR, 320 x 320, outputs log-softmax.
RACE_FILE = "resnet_race_detection_val-loss_0.157_mimic_public.pt"
RACE_LABELS: tuple[str, ...] = ("Asian", "Black", "White")
# Age: Ieki et al. 2022 (RIKEN), SENet-154 as TorchScript, trained on NIH ChestX-ray14, 320 x 320, years.
AGE_FILE = "baseline_models_riken_xray_age_every_model_age_senet154_v2_tl_26_ft_7_fp32.pt"
BASELINE_RESOLUTION = 320
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# This project's canonical finding names (editor.vocabulary) -> the DenseNet label that scores them.
# Only direct matches; "enlargement of the cardiac silhouette" goes to "Enlarged Cardiomediastinum", the
# nearest label (CheXpert's parent category of cardiomegaly). Findings not listed are reported as not scored.
FINDING_TO_LABEL: dict[str, str] = {
    "atelectasis": "Atelectasis",
    "consolidation": "Consolidation",
    "pneumothorax": "Pneumothorax",
    "edema": "Edema",
    "emphysema": "Emphysema",
    "fibrosis": "Fibrosis",
    "pleural effusion": "Effusion",
    "pneumonia": "Pneumonia",
    "pleural thickening": "Pleural_Thickening",
    "cardiomegaly": "Cardiomegaly",
    "nodule": "Nodule",
    "mass": "Mass",
    "hernia": "Hernia",
    "lung lesion": "Lung Lesion",
    "fracture": "Fracture",
    "lung opacity": "Lung Opacity",
    "enlargement of the cardiac silhouette": "Enlarged Cardiomediastinum",
}


def weights_for_file(filename: str) -> PathologyWeights | None:
    return next((w for w in PATHOLOGY_WEIGHTS.values() if w.filename == filename), None)
