"""The toy world (ctrlbench/toyworld): scenes, their text and masks, and its training code."""

import json

import numpy as np
import pytest
import torch

from ctrlbench.toyworld import scenes


def test_scenes_are_deterministic_and_varied():
    a, b = scenes.scene_for(3, 17), scenes.scene_for(3, 17)
    assert a == b and np.array_equal(np.asarray(scenes.render(a)), np.asarray(scenes.render(b)))
    assert scenes.scene_for(3, 18) != a and scenes.scene_for(4, 17) != a
    drawn = [scenes.scene_for(0, i) for i in range(400)]
    counts = np.bincount([len(s.objects) for s in drawn], minlength=5)
    assert counts[0] == 0 and (counts[1:] > 60).all()  # 1-4 objects, each count common
    assert {o.shape for s in drawn for o in s.objects} == set(scenes.SHAPES)
    assert {o.color for s in drawn for o in s.objects} == set(scenes.COLORS)
    assert {o.size for s in drawn for o in s.objects} == set(scenes.SIZES)
    assert {s.background for s in drawn} == set(scenes.BACKGROUNDS)
    with pytest.raises(ValueError, match="1-4 objects"):
        scenes.scene_for(0, 0, n_objects=5)


def test_masks_match_the_render_and_never_overlap():
    for index in range(30):
        scene = scenes.scene_for(1, index)
        image = np.asarray(scenes.render(scene), np.int64)
        masks = scenes.instance_masks(scene)
        assert masks.shape == (len(scene.objects), 64, 64) and masks.any(axis=(1, 2)).all()
        assert masks.sum(0).max() == 1  # disjoint
        for obj, mask in zip(scene.objects, masks):
            inside = image[mask & ~_edge(mask)]
            assert np.abs(inside - scenes.COLORS[obj.color]).max() <= 1, (index, obj)
        background = image[~masks.any(0) & ~_edge(masks.any(0))]
        assert np.abs(background - scenes.BACKGROUNDS[scene.background]).max() <= 1


def _edge(mask):
    """Pixels next to the mask's border (antialiased there)."""
    padded = np.pad(mask, 1, mode="edge")
    shifted = [padded[1 + dy:65 + dy, 1 + dx:65 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return np.any([s != mask for s in shifted], axis=0)


def test_caption_names_every_object_and_paragraphs_are_long():
    from ctrlbench.models.clip_tokenizer import build_clip_tokenizer

    scene = scenes.Scene("white", (scenes.ToyObject("circle", "red", "small", 0.2, 0.5),
                                   scenes.ToyObject("square", "orange", "large", 0.7, 0.4)))
    assert scene.caption() == "a red circle left of an orange square on a white background"
    assert "a small red circle in the left part" in scene.paragraph()
    tokenizer = build_clip_tokenizer(__import__("tempfile").mkdtemp())
    for index in range(40):
        scene = scenes.scene_for(2, index)
        assert all(o.name in scene.caption() for o in scene.objects)
        if len(scene.objects) >= 3:
            assert len(tokenizer(scene.paragraph()).input_ids) > 77, scene.paragraph()


def test_stroke_painting_is_a_blurred_flat_version_of_the_scene():
    scene = scenes.scene_for(5, 2)
    painting = np.asarray(scenes.stroke_painting(scene, seed=1), np.float64)
    render = np.asarray(scenes.render(scene), np.float64)
    assert painting.shape == render.shape
    assert np.abs(painting - render).mean() < 30  # the same layout and colours, roughly
    assert np.array_equal(painting, np.asarray(scenes.stroke_painting(scene, seed=1), np.float64))
    assert not np.array_equal(painting, np.asarray(scenes.stroke_painting(scene, seed=2), np.float64))


def test_class_maps_label_each_object_with_its_shape():
    from ctrlbench.toyworld.train import SEGMENTER_CLASSES, class_maps

    scene = scenes.scene_for(0, 3)
    maps = class_maps([scene])[0].numpy()
    for obj, mask in zip(scene.objects, scenes.instance_masks(scene)):
        assert (maps[mask] == SEGMENTER_CLASSES.index(obj.shape)).all()
    assert (maps[~scenes.instance_masks(scene).any(0)] == 0).all()


@pytest.mark.parametrize("model", ["vae", "sd", "clip", "segmenter"])
def test_a_few_training_steps_lower_the_loss(tmp_path, model):
    """Each trainer, from scratch for a few steps of its real loop (small batches): the loss
    of the last steps is below that of the first ones (the VAE, whose batches differ a lot
    in difficulty, on one fixed batch of held-out scenes, before and after). The vae is
    trained first where sd and the segmenter need it."""
    import pandas as pd

    from ctrlbench.toyworld import train

    steps = {"vae": 16, "sd": 16, "clip": 16, "segmenter": 12}[model]
    overrides = {"vae": {"batch_size": 8}, "sd": {"batch_size": 16, "n_latents": 256, "warmup": 1},
                 "clip": {"batch_size": 32, "warmup": 1}, "segmenter": {"batch_size": 8}}
    if model in ("sd", "segmenter"):  # both see images through the toy VAE
        train.train("vae", tmp_path, {**train.SETTINGS["vae"], "steps": 2, "batch_size": 4})
    entry = train.train(model, tmp_path, {**train.SETTINGS[model], "steps": steps, **overrides[model]})
    history = pd.read_csv(tmp_path / model / "history.csv")
    assert len(history) == steps
    assert all(len(f["sha256"]) == 64 for f in entry["files"].values())
    if model == "vae":
        from diffusers import AutoencoderKL

        _, images, _ = train.scene_batch(0, 16, seed=999)
        torch.manual_seed(0)  # the trainer's seed: the same initial weights
        before, after = train.new_vae(), AutoencoderKL.from_pretrained(tmp_path / "vae", torch_dtype=torch.float32)
        with torch.no_grad():
            errors = [(vae.decode(vae.encode(images).latent_dist.mean).sample - images).abs().mean().item()
                      for vae in (before, after)]
        assert errors[1] < errors[0], errors
    else:
        first, last = history["loss"][:3].mean(), history["loss"][-3:].mean()
        assert last < first, history["loss"].tolist()


def test_a_few_controlnet_steps_lower_the_loss_on_held_out_scenes(tmp_path):
    """The ControlNet trainer on the committed toy SD for a few steps: on a fixed batch of
    held-out scenes (fixed noise and timesteps), the UNet's epsilon error with the trained
    ControlNet is below the error of the untrained one (zero convolutions: the SD alone)."""
    import shutil

    from diffusers import ControlNetModel

    from ctrlbench.toyworld import scenes, train
    from ctrlbench.toyworld.claims import WEIGHTS

    shutil.copytree(WEIGHTS / "sd", tmp_path / "sd")
    train.train("controlnet", tmp_path, {**train.SETTINGS["controlnet"], "steps": 40, "batch_size": 16,
                                          "n_latents": 256, "warmup": 1, "lr": 1e-3})
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "sd", torch_dtype=torch.float32, safety_checker=None)
    images = [scenes.render(scenes.scene_for(999, i), train.IMAGE_SIZE) for i in range(32)]
    captions = [scenes.scene_for(999, i).caption() for i in range(32)]
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x0 = pipe.vae.encode(train.images_tensor(images)).latent_dist.mean * pipe.vae.config.scaling_factor
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(300, 1000, (len(images),), generator=generator)
        a = pipe.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * x0 + (1 - a).sqrt() * noise
        ids = pipe.tokenizer(captions, padding="max_length", max_length=77, return_tensors="pt").input_ids
        text = pipe.text_encoder(ids)[0]
        cond = train.canny_tensor(images)
        errors = []
        for controlnet in (ControlNetModel.from_unet(pipe.unet, conditioning_embedding_out_channels=(16, 32, 64)),
                           ControlNetModel.from_pretrained(tmp_path / "controlnet", torch_dtype=torch.float32)):
            down, mid = controlnet(noisy, t, text, controlnet_cond=cond, return_dict=False)
            prediction = pipe.unet(noisy, t, text, down_block_additional_residuals=down,
                                   mid_block_additional_residual=mid).sample
            errors.append(torch.nn.functional.mse_loss(prediction, noise).item())
    assert errors[1] < errors[0], errors


def test_controlnet_training_without_the_sd_says_what_to_train_first(tmp_path):
    from ctrlbench.toyworld import train

    with pytest.raises(FileNotFoundError, match="no trained toy SD.*--only vae sd"):
        train.train("controlnet", tmp_path, {**train.SETTINGS["controlnet"], "steps": 1})
    assert not (tmp_path / "controlnet").exists()


def test_training_without_the_vae_says_what_to_train_first(tmp_path):
    from ctrlbench.toyworld import train

    with pytest.raises(FileNotFoundError, match="no trained toy VAE.*--only vae"):
        train.train("segmenter", tmp_path, {**train.SETTINGS["segmenter"], "steps": 1})
    assert not (tmp_path / "segmenter").exists()


def test_loss_curves_are_drawn_from_the_histories(tmp_path):
    from PIL import Image

    from ctrlbench.toyworld import train
    from ctrlbench.toyworld.claims import WEIGHTS

    out = train.plot_losses(WEIGHTS, tmp_path / "losses.png")
    with Image.open(out) as image:
        assert image.format == "PNG" and image.width > 3 * image.height  # one panel per model, side by side
    with pytest.raises(FileNotFoundError, match="no <model>/history.csv"):
        train.plot_losses(tmp_path, tmp_path / "none.png")
