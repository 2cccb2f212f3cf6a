"""InstructX2X editor: region-specific counterfactual editing of chest radiographs (synthetic output).

The seam to the rest of the product is one call: `Editor.edit(image, instruction, *, seed, params)`.
This package never imports `dicom_node`. Importing it does not import torch (that happens on load).
"""

from editor.editor import Editor
from editor.instructions import InstructionError, ParsedInstruction, parse_instruction
from editor.source import source_from_dataset, source_from_file
from editor.types import EditParams, EditResult, SourceImage

__all__ = [
    "EditParams",
    "EditResult",
    "Editor",
    "InstructionError",
    "ParsedInstruction",
    "SourceImage",
    "parse_instruction",
    "source_from_dataset",
    "source_from_file",
]
