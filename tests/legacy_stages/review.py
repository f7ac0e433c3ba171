"""Stage review: score every prepared image with out-of-sample probabilities (K-fold
cross-fitting of the head on the train stage's frozen-backbone features, shared through the
feature cache) and write the ranked lists of likely label errors, near-duplicates and outliers
to metrics/review/ and their counts and estimated label-noise rates to metrics/review.json."""

from folderfit.cli import stage_main

if __name__ == "__main__":
    stage_main("review", __doc__, "folderfit.review:run")
