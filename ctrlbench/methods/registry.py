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

CONTROLNET_DEFAULTS = {
    # mmm2025 regeneration: ControlNet canny on SD v1.5, DDIM 20 steps, guidance 9.0.
    "num_inference_steps": 20,
    "guidance_scale": 9.0,
    "controlnet_conditioning_scale": 1.0,
    "eta": 0.0,
    "seed": 42,
    "low_threshold": 100,
    "high_threshold": 200,
    "long_side": 512,            # control image resized so its long side is ~this, multiple of 64
    "samples_per_input": 10,
    "base_samples": 1,           # regenerate the first N base images of each item
    "batch_size": 8,
    "prompt_template": "a photo of {class}, {prompt}, best quality, extremely detailed",
    "negative_prompt": "lowres, bad anatomy, extra digit, fewer digits, worst quality, low quality",
}

RETRIEVAL_DEFAULTS = {
    # mmm2025 real base images: the best train-split ("gallery") image for each query.
    "strategy": "text",          # attribute (CUB's 312 attributes) | text (prompt vs captions)
}

SELECT_DEFAULTS = {
    # mmm2025 "AS": the candidate base image with the highest CLIP text-image score.
    "batch_size": 32,
}

SDEDIT_DEFAULTS = {
    # SDEdit baseline of GradOP+: img2img on the stroke painting (SD v1.4, DDIM 50, 7.5, seed 0).
    "num_inference_steps": 50,
    "guidance_scale": 7.5,
    "strength": 0.8,
    "eta": 0.0,
    "seed": 0,
    "height": 512,
    "width": 512,
    "samples_per_input": 1,
    "batch_size": 4,
    "negative_prompt": "",
}

GRADOP_DEFAULTS = {
    # GradOP+: gradient optimisation of the latent toward the blurred strokes.
    "num_inference_steps": 50,
    "guidance_scale": 7.5,
    "strength": 0.8,
    "num_iterative_steps": 3,
    "grad_steps_per_iter": 12,
    "lr": 0.1,
    "blur_kernel": 35,
    "blur_sigma": 7.0,
    "eta": 0.0,
    "seed": 0,
    "height": 512,
    "width": 512,
    "samples_per_input": 1,
    "batch_size": 1,
    "negative_prompt": "",
    "memory_saver": "none",      # none | vae_slicing | vae_tiling | checkpointing
}

TCIG_DEFAULTS = {
    # TCIG: stage 1 optimises a decoder latent (CLIP + segmentation loss), stage 2 img2img.
    "decoder": "sd_vae",         # sd_vae | vqmodel (decoder_path: a diffusers VQModel)
    "decoder_path": "",
    "decoder_subfolder": "",
    "iterations": 500,
    "lr": 0.1,
    "cutouts": 32,
    "cut_pow": 1.0,
    "clip_weight": 1.0,
    "seg_weight": 1.0,
    "stage2_strength": 0.6,
    "num_inference_steps": 50,
    "guidance_scale": 7.5,
    "negative_prompt": "",
    "seed": 0,
    "height": 512,
    "width": 512,
    "samples_per_item": 1,
}

METHOD_DEFAULTS = {
    "sd": SD_DEFAULTS,
    "controlnet": CONTROLNET_DEFAULTS,
    "retrieval": RETRIEVAL_DEFAULTS,
    "select": SELECT_DEFAULTS,
    "sdedit": SDEDIT_DEFAULTS,
    "gradop": GRADOP_DEFAULTS,
    "tcig": TCIG_DEFAULTS,
}
