"""ctrlbench: reproduce and compare controlled text-to-image diffusion methods.

All logic lives in this package; the Snakemake rules and scripts only call it.
"""

__version__ = "0.1.0"
