"""InstructX2X editor: region-specific counterfactual editing of chest radiographs (synthetic output).

The seam to the rest of the product is one call: `Editor.edit(image, instruction, *, seed, params)`,
plus the few helpers the node needs around it (reading a source image, its display mapping, the
instruction parser, model identity). Everything `dicom_node` uses outside its research commands is
exported here (a test checks it). This package never imports `dicom_node`, and importing it does not
import torch (that happens when a model is loaded).
"""

from editor.demo import demo_model_path
from editor.display import guidance_overlay, to_uint8
from editor.editor import Editor
from editor.instructions import FindingSpec, InstructionError, ParsedInstruction, parse_instruction
from editor.model import ModelInfo, ModelLoadError, describe_model, disable_progress_bars
from editor.preprocess import DisplayMapping
from editor.result_file import EditResultFileError, load_edit_result, save_edit_result
from editor.source import UnsupportedImageError, source_from_dataset, source_from_file
from editor.tiny import init_tiny_model
from editor.types import EditItem, EditParams, EditResult, SourceImage
from editor.vocabulary import FINDINGS, FindingInfo

__all__ = [
    "FINDINGS",
    "DisplayMapping",
    "EditItem",
    "EditParams",
    "EditResult",
    "EditResultFileError",
    "Editor",
    "FindingInfo",
    "FindingSpec",
    "InstructionError",
    "ModelInfo",
    "ModelLoadError",
    "ParsedInstruction",
    "SourceImage",
    "UnsupportedImageError",
    "demo_model_path",
    "describe_model",
    "disable_progress_bars",
    "guidance_overlay",
    "init_tiny_model",
    "load_edit_result",
    "parse_instruction",
    "save_edit_result",
    "source_from_dataset",
    "source_from_file",
    "to_uint8",
]
