"""Stage prepare: validate the ImageFolder at `data.source`, split it (or keep its own
train/ val/ [test/] split), store every image small and upright in data/prepared/ with a
manifest, and report counts, skipped files and duplicates in metrics/data.json."""

from folderfit.cli import stage_main

if __name__ == "__main__":
    stage_main("prepare", __doc__, "folderfit.prepare:run")
