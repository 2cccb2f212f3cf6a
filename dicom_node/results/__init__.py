"""EditResult -> the five DICOM objects the node returns to the PACS (encode.py), and every file an edit
leaves on disk (outputs.py: `write_outputs`, used by the pipeline, `x2x batch` and `x2x edit`).

Objects (file names in a results folder): counterfactual.dcm (Secondary Capture of the edited image),
seg.dcm (BINARY SEG of the mask M), fseg.dcm (FRACTIONAL SEG of G), pmap.dcm (Parametric Map of G),
overlay.dcm (RGB SC: source grey + G red). All share the source's study, each in its own new series,
all with UIDs derived from the job's key.
"""

from dicom_node.results.encode import FILE_NAMES, KINDS, encode_results, output_uids
from dicom_node.results.outputs import (
    PREVIEW_NAMES,
    OutputSet,
    WrittenOutputs,
    edit_result_path,
    is_dicom_file,
    result_files,
    save_objects,
    write_outputs,
)

__all__ = [
    "FILE_NAMES",
    "KINDS",
    "PREVIEW_NAMES",
    "OutputSet",
    "WrittenOutputs",
    "edit_result_path",
    "encode_results",
    "is_dicom_file",
    "output_uids",
    "result_files",
    "save_objects",
    "write_outputs",
]
