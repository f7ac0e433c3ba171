"""folderfit: adapt an ImageNet-pretrained CNN to your own labelled image folders, as a
reproducible DVC pipeline (`dvc repro`), and use the trained model from Python:

    from PIL import Image
    import folderfit

    classifier = folderfit.load("models/model.pt")
    print(classifier.classify(Image.open("photo.jpg")))  # [('cat', 0.97), ('dog', 0.02), ...]

Importing this package is cheap; torch is loaded by `load`.
"""

from folderfit.paths import MODEL_FILE

__version__ = "0.2.0"


def load(path=MODEL_FILE, precision: str = "auto", device: str = "auto"):
    """The model file written by the train stage, ready to classify PIL images
    (a folderfit.compute.classifier.Classifier). device: auto | cpu | cuda | cuda:N | mps;
    precision: auto (the precision evaluate scored the model in, recorded in the file) |
    fp32 | bf16 | fp16."""
    from folderfit.compute.classifier import Classifier

    return Classifier.from_file(path, precision=precision, device=device)


__all__ = ["load", "__version__"]
