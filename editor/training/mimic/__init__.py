"""Build MIMIC-EDIT-INSTRUCTION from MIMIC-Diff-VQA difference answers and MIMIC-CXR-JPG.

Inputs (the real release formats; `.csv.gz` is read as well as `.csv`):

* questions — MIMIC-Diff-VQA `mimic_pair_questions.csv` (or a JSON list of the same records).
  Columns used: `study_id` (the main = current study), `ref_id` (the reference = past study),
  `question_type` ('difference', 'location', 'level', ...), `question`, `answer`; optional `split`,
  `subject_id`. Other columns (an unnamed index ...) are ignored. Ids may be written `50414267`,
  `50414267.0` or `s50414267`.
* metadata — MIMIC-CXR `mimic-cxr-2.0.0-metadata.csv`: `dicom_id`, `subject_id`, `study_id`,
  `ViewPosition` (PA, AP, LATERAL, LL ...).
* split file (optional when the questions carry `split`) — `mimic-cxr-2.0.0-split.csv`:
  `dicom_id`, `study_id`, `subject_id`, `split` (train / validate / test).
* jpg root — MIMIC-CXR-JPG: `files/p<first 2 digits>/p<subject_id>/s<study_id>/<dicom_id>.jpg`.

Rules:

* Only 'difference' rows make samples; one sample group per (current, past) study pair (later
  duplicates are dropped as `duplicate_pair`).
* The answer parser (`parse_difference_answer`) reads the three sentence forms of MIMIC-Diff-VQA:
  "the main image has additional findings of A, B, and C than the reference image." (added),
  "the main image is missing the findings of D than the reference image." (removed),
  "the level of E has changed from small to moderate." (level change); "nothing has changed." means
  no difference. Finding phrases go through the editor's own grammar (`editor.instructions`, closed
  vocabulary of `editor.vocabulary`): a pair whose answer names any unknown finding (or an unknown
  level) is dropped whole and counted -- keeping the pair minus that finding would teach the model an
  instruction that leaves out part of the change it sees (label noise).
* v1: one instruction per operation: "Add the findings of A, B and C." / "Remove the finding of D." /
  "Change the level of E from small to moderate.". v2 (`v2=True`, the default, the research release's
  current form): one finding per instruction, with
  the location and severity the answer gives or, failing that, the 'location' / 'level' questions of
  the same study ("where in the image is the pleural effusion located?" -> "left lung, right lung";
  "what level is the pleural effusion?" -> "moderate"): the current study for added findings, the past
  study for removed ones. Written to the `location` (space-separated canonical words) and `severity`
  columns as well; `severity` is the finding's level where it is present (current image for add and
  change, i.e. the level it changed *to*; past image for remove).
* Images: frontal views only (ViewPosition PA, then AP); within a study the first existing JPG in the
  order (PA before AP, then dicom_id ascending), so the choice is deterministic.
* Split: the questions' `split` column when present, else the split file's split of the current image.

Drop reasons (counted in stats.json, pairs): no_past_study, duplicate_pair, unparsed_answer,
no_difference, unknown_finding (the answer names a finding outside the vocabulary; `unknown_findings`
counts the phrases, `pairs_dropped_by_unknown_finding` the pairs per phrase), unknown_level,
study_not_in_metadata, lateral_only, missing_image, no_split.

Images (optional): `<out>/images/<dicom_id>.png`, 8-bit grayscale at `image_size`² ("squash": the
whole image resized to a square, as the paper's 512x512 inputs; "pad": letterboxed; "crop": centre
crop of the shorter side).

The package: `sources.py` (reading the release files, choosing a study's frontal image), `answers.py`
(difference answers and single-image questions -> instructions), `build.py` (`build_dataset`),
`stats.py` (what was kept and dropped), `images.py` (the PNGs).
"""

from editor.training.mimic.answers import Difference, StudyDetails, instruction_rows, parse_difference_answer
from editor.training.mimic.build import build_dataset
from editor.training.mimic.images import Fit, prepare_image, write_dataset_images
from editor.training.mimic.sources import (
    FRONTAL_ORDER,
    Image,
    choose_frontal,
    jpg_path,
    norm_id,
    read_metadata,
    read_records,
    read_split,
)
from editor.training.mimic.stats import DROP_REASONS, BuildStats, stats_table

__all__ = [
    "DROP_REASONS",
    "FRONTAL_ORDER",
    "BuildStats",
    "Difference",
    "Fit",
    "Image",
    "StudyDetails",
    "build_dataset",
    "choose_frontal",
    "instruction_rows",
    "jpg_path",
    "norm_id",
    "parse_difference_answer",
    "prepare_image",
    "read_metadata",
    "read_records",
    "read_split",
    "stats_table",
    "write_dataset_images",
]
