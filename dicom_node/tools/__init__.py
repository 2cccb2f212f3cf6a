"""Tools beside the PACS flow that reuse its stages: research batches over archives, phantom studies."""
