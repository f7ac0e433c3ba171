"""The feature_extract path: backbone features cached per image and view (feature_cache), the
extractor exactly as train builds it (extractor), the linear head solved on the features (head),
the probe procedure around it (probe), out-of-sample probabilities (crossfit), neighbourhoods
in feature space (similarity) and accuracy against photos per class (learning_curve).
"""
