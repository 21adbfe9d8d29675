"""The toy world: synthetic scenes of coloured shapes, and the models trained on them here
(docs/toyworld.md). `scenes` draws the world; the other modules train and check models."""
