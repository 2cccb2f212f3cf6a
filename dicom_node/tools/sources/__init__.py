"""Where `x2x batch` reads its inputs: one module per kind of source behind one interface (base.py).

folder.py (DICOM / PNG / JPG tree), table.py (MIMIC-EDIT-INSTRUCTION CSV), dicomweb.py (QIDO-RS +
WADO-RS, STOW-RS back), pacs.py (C-FIND + C-GET / C-MOVE, C-STORE back; move_scp.py is the C-MOVE
destination), query.py (the archive query both archives share), prefetch.py (retrieval overlapping editing).
"""

from dicom_node.tools.sources.base import (
    BatchItem,
    Instructions,
    Prepared,
    Skip,
    Source,
    SourceError,
    SourceUnavailable,
)

__all__ = ["BatchItem", "Instructions", "Prepared", "Skip", "Source", "SourceError", "SourceUnavailable"]
