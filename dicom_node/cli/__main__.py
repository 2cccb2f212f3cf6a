"""`python -m dicom_node.cli` is `x2x`."""

from dicom_node.cli import main

main()
