"""`python -m comfymesh.cli`, the same as the `comfymesh` console script."""

from comfymesh.cli import main

main()
