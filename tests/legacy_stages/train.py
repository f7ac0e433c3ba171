"""Stage train: build the backbone named by `model_name`, freeze it by `strategy`, train on
data/prepared, and write models/model.pt (one self-contained file), metrics/train.json,
metrics/timing.json, and details and curves in metrics/train/.
Several GPUs: torchrun --nproc_per_node=N -m stages.train"""

from folderfit.cli import stage_main

if __name__ == "__main__":
    stage_main("train", __doc__, "folderfit.training:run")
