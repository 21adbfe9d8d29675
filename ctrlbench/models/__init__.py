"""Model registry (light, no torch), tiny stand-in builders and loaders."""
