"""Stage demo_data: write the built-in demo set (scikit-learn's handwritten digits, no
network) as an ImageFolder of PNGs in data/demo/<digit>/, `demo.per_class` per digit."""

from folderfit.cli import stage_main

if __name__ == "__main__":
    stage_main("demo_data", __doc__, "folderfit.demo:run")
