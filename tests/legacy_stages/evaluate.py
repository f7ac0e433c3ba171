"""Stage evaluate: score the held-out split (test, else val) with models/model.pt and write
metrics/eval.json (headline numbers), metrics/classification_report.txt and metrics/eval/
(per-class report, predictions, confusion matrices, ROC/PR curves, calibration, mistakes)."""

from folderfit.cli import stage_main

if __name__ == "__main__":
    stage_main("evaluate", __doc__, "folderfit.evaluation:run")
