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
    # chunked (77-token chunks, ours) | truncate (the first 75 tokens, diffusers) |
    # authors (mmm2025's prompt2img.py: first line, 800 characters, unpadded 77-id slices)
    "text_handling": "chunked",
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
    "control_resize": "annotator",  # annotator (ControlNet's resize_image, as canny.py) | long_side
    "canny_input": "rgb",        # rgb (ControlNet's CannyDetector on the RGB array) | gray
    "text_handling": "chunked",  # chunked | truncate (ControlNet's own 77-token CLIP) | authors
    "samples_per_input": 10,
    "base_samples": 1,           # regenerate the first N base images of each item; 0 = all of them
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

# TCIG's choices (docs/methods/tcig.md). The cut methods are VQGAN+CLIP generate.py's
# --cut_method values: original = random crops only; nrupdated = random crops + its default
# augments; latest (its default) = the whole image pooled to the CLIP size + the augments.
TCIG_DECODERS = ("sd_vae", "vqmodel")
TCIG_CUT_METHODS = ("original", "nrupdated", "latest")
TCIG_OPTIMIZERS = ("adam", "adamw")

TCIG_DEFAULTS = {
    # Stage 1 (VQGAN+CLIP generate.py defaults: 500 iterations, Adam, lr 0.1, 32 cutouts,
    # cut_pow 1, cut method "latest" with its augments).
    "decoder": "sd_vae",         # sd_vae (the SD pipeline's VAE) | vqmodel (the method's `vqmodel` model)
    "iterations": 500,
    "optimizer": "adam",         # adam (generate.py's default) | adamw (torch's weight decay 0.01)
    "lr": 0.1,
    "cutouts": 32,
    "cut_pow": 1.0,              # random-crop size exponent (original, nrupdated)
    "cut_method": "latest",      # original | nrupdated | latest (TCIG_CUT_METHODS)
    "clip_weight": 1.0,
    "seg_weight": 1.0,           # one weight for every target mask (stage1 also takes a per-class dict)
    # Stage 2: SD img2img on the stage-1 image.
    "stage2_strength": 0.6,      # 0 = no stage 2 (the final image is the stage-1 image)
    "num_inference_steps": 50,
    "guidance_scale": 7.5,
    "negative_prompt": "",
    # Both stages.
    "seed": 0,                   # sample k of an item uses seed + k in both stages
    "height": 512,
    "width": 512,
    "samples_per_item": 1,
}

MULTIDIFFUSION_PANORAMA_DEFAULTS = {
    # MultiDiffusion panorama (paper: SD 2.0 base, DDIM 50, 7.5, seed 0, 512x4608).
    "num_inference_steps": 50,
    "guidance_scale": 7.5,
    "height": 512,
    "width": 4608,
    "window_size": 64,           # latent pixels (64 = 512 image pixels)
    "stride": 8,                 # latent pixels between windows
    "view_batch_size": 1,        # windows denoised in one UNet call
    "seed": 0,
    "negative_prompt": "",
    "samples_per_prompt": 1,
    "crop_size": 0,              # square crops for the metrics; 0 = the panorama height
    "vae_tiling": False,         # decode the panorama in tiles (less memory at 512x4608)
}

MULTIDIFFUSION_REGIONS_DEFAULTS = {
    # MultiDiffusion region-based generation: one prompt per mask + a background prompt.
    "num_inference_steps": 50,
    "guidance_scale": 7.5,
    "height": 512,
    "width": 512,
    "window_size": 64,
    "stride": 8,
    "bootstrap_fraction": 0.2,   # bootstrapping during this fraction of the steps (paper: 20%)
    "bootstrap_steps": -1,       # >= 0: this many steps instead (public code: 20 of 50); -1 = use the fraction
    "n_backgrounds": 20,         # random constant-colour backgrounds used while bootstrapping
    "region_prompt": "a {class}",      # prompt of each mask; {class} = its class name
    "background_prompt": "{prompt}",   # {prompt} = the item's prompt (the COCO caption)
    "seed": 0,
    "negative_prompt": "",
    "samples_per_item": 1,
}

REGION_BASELINE_DEFAULTS = {
    # SI / BLD (MultiDiffusion's IoU table): generate the background prompt's image, then
    # edit each mask in turn with its region prompt.
    "num_inference_steps": 50,
    "guidance_scale": 7.5,
    "height": 512,
    "width": 512,
    "region_prompt": "a {class}",
    "background_prompt": "{prompt}",
    "seed": 0,
    "negative_prompt": "",
    "samples_per_item": 1,
}

# Where the 7B text encoder runs, and in which dtype (docs/methods/paradiffusion.md).
PARADIFFUSION_PLACEMENTS = ("device", "cpu", "offload", "device_map")
PARADIFFUSION_ENCODER_DTYPES = ("auto", "float32", "float16", "bfloat16")

PARADIFFUSION_DEFAULTS = {
    # ParaDiffusion (its demo.py: 1024x640, DPMSolver multistep 100 steps, guidance 7.5,
    # seed 45): Llama-2 + LoRA paragraph features straight into the UNet.
    "num_inference_steps": 100,
    "guidance_scale": 7.5,
    "height": 640,
    "width": 1024,
    "images_per_prompt": 1,
    "batch_size": 4,
    "seed": 45,
    "negative_prompt": "",
    "max_text_tokens": 256,          # the tokenizer pads (with EOS) and truncates to this length
    "text_encoder_dtype": "auto",    # auto (= the job dtype) | float32 | float16 | bfloat16
    "text_encoder_placement": "device",  # device | cpu | offload | device_map (docs/methods/paradiffusion.md)
}

# Parameters that take one of a few words: {kind: {parameter: allowed values}}, checked at
# config time (ctrlbench.config).
TEXT_HANDLING_CHOICES = ("chunked", "truncate", "authors")
PARAMETER_CHOICES = {
    "sd": {"text_handling": TEXT_HANDLING_CHOICES},
    "controlnet": {"text_handling": TEXT_HANDLING_CHOICES, "control_resize": ("annotator", "long_side"),
                   "canny_input": ("rgb", "gray")},
    "retrieval": {"strategy": ("attribute", "text")},
    "paradiffusion": {"text_encoder_placement": PARADIFFUSION_PLACEMENTS,
                      "text_encoder_dtype": PARADIFFUSION_ENCODER_DTYPES},
    "tcig": {"decoder": TCIG_DECODERS, "cut_method": TCIG_CUT_METHODS, "optimizer": TCIG_OPTIMIZERS},
}

METHOD_DEFAULTS = {
    "sd": SD_DEFAULTS,
    "controlnet": CONTROLNET_DEFAULTS,
    "retrieval": RETRIEVAL_DEFAULTS,
    "select": SELECT_DEFAULTS,
    "sdedit": SDEDIT_DEFAULTS,
    "gradop": GRADOP_DEFAULTS,
    "tcig": TCIG_DEFAULTS,
    "multidiffusion_panorama": MULTIDIFFUSION_PANORAMA_DEFAULTS,
    "multidiffusion_regions": MULTIDIFFUSION_REGIONS_DEFAULTS,
    "si": REGION_BASELINE_DEFAULTS,
    "bld": REGION_BASELINE_DEFAULTS,
    "paradiffusion": PARADIFFUSION_DEFAULTS,
}
