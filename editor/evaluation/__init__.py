"""Reproducing the paper's evaluation (`x2x reproduce`): InstructX2X's table on a MIMIC-EDIT-INSTRUCTION split.

rows.py        the test split of the table and where each row's images are (three layouts)
methods.py     the compared methods (IP2P, paper masks, anatomy prior, tau sweep) and the published numbers
driver.py      edit every row through `edit_rows` (the batching seam), score it, one fsync'ed line per row
reference.py   the real images of each row, scored once (source side, "Real images" row)
metrics.py     pathology / race accuracy, age correlation, CMIG, locality, paired bootstrap intervals
fid.py         Fréchet distance on torchxrayvision DenseNet features
classifiers.py torchxrayvision's pathology, race and age classifiers from a local folder
nets.py        their architectures (no torchvision), checkpoints.py their weight files (no arbitrary unpickling)
report.py      report.json / report.md; figure.py the figure grid
reproduce.py   the whole run

Importing this package imports no torch; the modules that need it import it.
"""
