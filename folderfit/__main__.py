"""`python -m folderfit ...` is the `folderfit` console script."""

from folderfit.cli import main

main()
