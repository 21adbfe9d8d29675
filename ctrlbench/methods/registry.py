"""Default parameters of every method kind, importable without torch.

Each entry is the full parameter set a method accepts; a config's `params` may override
any of them and `sweep` may vary any of them. Types here are the accepted types.
"""

SD_DEFAULTS = {
    # Stable Diffusion text-to-image (mmm2025 base generation: 50 steps, 7.5, 512, seed 42).
    "num_inference_steps": 50,
    "guidance_scale": 7.5,
    "height": 512,
    "width": 512,
    "images_per_prompt": 5,
    "batch_size": 8,
    "seed": 42,
    "negative_prompt": "",
}

METHOD_DEFAULTS = {
    "sd": SD_DEFAULTS,
}
