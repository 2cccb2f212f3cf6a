"""Research tooling: build MIMIC-EDIT-INSTRUCTION, fine-tune the IP2P UNet, evaluate counterfactuals.

Modules import torch / diffusers lazily inside functions so that importing this package stays cheap.
`editor.training` never imports `dicom_node`.
"""
