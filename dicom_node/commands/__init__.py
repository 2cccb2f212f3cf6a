"""`x2x` subcommands, one module per area; each registers on the apps in `dicom_node.cli_apps`."""
