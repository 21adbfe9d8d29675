"""The toy world: synthetic scenes of coloured shapes, and the models trained on them here
(docs/toyworld.md). `scenes` draws the world; the other modules train and check models."""

# The worlds (scenes.scene_for seeds) the toy models are trained on (train.py: TRAIN_SEED for
# the VAE and SD, + 1 for CLIP, + 2 for the segmenter, + 3 for the ControlNet). Datasets and
# claims use other seeds, so every score is on held-out scenes; the config refuses these for
# `toyworld.seed`.
TRAINING_SEEDS = (0, 1, 2, 3)
# The dataset formats the world is written in (formats.py; a dataset with root: toyworld).
DATASET_FORMATS = ("coco", "cub", "strokes", "paraprompts", "prompts")
