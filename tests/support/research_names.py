"""The research code's finding names, as issue 14 lists them: the tests' own copy (an oracle for
editor/vocabulary.py, not imported from it)."""

# The research code's 31 names (its VALID_CATEGORIES), as the issue lists them.
RESEARCH_31 = (
    "fracture", "thymoma", "tortuosity of the descending aorta", "blunting of the costophrenic angle",
    "atelectasis", "hilar congestion", "hernia", "cardiomegaly", "consolidation", "pleural effusion",
    "tortuosity of the thoracic aorta", "vascular congestion", "pleural thickening", "granuloma",
    "lung opacity", "contusion", "hypertensive heart disease", "heart failure", "gastric distention",
    "pneumomediastinum", "calcification", "infection", "air collection", "pneumonia",
    "enlargement of the cardiac silhouette", "edema", "emphysema", "scoliosis", "hypoxemia", "hematoma",
    "pneumothorax",
)
