"""Base images for regeneration: retrieval of real images and selection among candidates."""
