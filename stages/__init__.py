"""Transfer-learning pipeline: prepare -> train -> evaluate, driven by DVC."""
