"""NaN / inf images and CUDA out-of-memory in every generation method but SD (SD's own
tests: test_bad_inputs.py), on tiny random models.

A NaN is injected with a forward hook on the model that makes the images (the UNet, or
the VAE decoder for TCIG stage 1); out-of-memory with a forward pre-hook on the UNet that
raises torch.cuda.OutOfMemoryError for more than one image (two latents with guidance).
The shard inputs and parameters are those of the methods' own test files.
"""

import logging

import pandas as pd
import pytest
import torch

import test_controlnet as t_cn
import test_multidiffusion as t_md
import test_region_baselines as t_rb
import test_sdedit_gradop as t_sg
import test_tcig as t_tcig
from ctrlbench.methods import bld, region_editing, si, tcig
from ctrlbench.methods import controlnet as cn
from ctrlbench.methods import multidiffusion as md
from ctrlbench.methods import sdedit as se
from test_bad_inputs import assert_no_output, tree

one_thread = t_sg.one_thread  # autouse: one torch thread, several times faster on 2 cores


@pytest.fixture(scope="module")
def config(tiny_config):
    return tiny_config("method_faults", {"sd": "sd", "controlnet": "controlnet", "clip": "open_clip",
                                         "deeplab": "deeplabv3", "sd_inpaint": "sd_inpaint"})


# --- the shards: run(config, inputs folder, out folder, **params) -> manifest ---------------------

def run_controlnet(config, folder, out, **params):
    base = folder / "base"
    if not base.exists():
        t_cn.make_base(base, {"a": 1, "b": 1})
    return cn.run_shard(config, "sd", "controlnet", str(base), t_cn.make_prompts(folder / "prompts.csv"), str(out),
                        {**t_cn.PARAMS, **params})


def stroke_inputs(folder):
    folder.mkdir(parents=True, exist_ok=True)
    return t_sg.write_inputs(folder / "inputs.csv", {f"i{k}": (t_sg.PROMPTS[k], t_sg.STROKES[k]) for k in range(2)})


def run_sdedit(config, folder, out, **params):
    return se.run_shard(config, "sd", stroke_inputs(folder), str(out),
                        {**t_sg.SDEDIT, "samples_per_input": 2, **params})


def run_gradop(config, folder, out, **params):
    from ctrlbench.methods import gradop as gp

    return gp.run_shard(config, "sd", stroke_inputs(folder), str(out),
                        {**t_sg.GRADOP, "num_inference_steps": 4, "num_iterative_steps": 1, "grad_steps_per_iter": 2,
                         "samples_per_input": 2, **params})


def region_inputs(folder):
    folder.mkdir(parents=True, exist_ok=True)
    dog = t_rb.write_mask(folder / "dog.png", t_rb.box_mask(16, 8, 48, 40))
    return t_rb.write_inputs(folder, {"a": [{"voc_class": "dog", "path": dog}]})


def run_tcig(config, folder, out, **params):
    return tcig.run_shard(config, "sd", "clip", "deeplab", region_inputs(folder), str(out),
                          {**t_tcig.PARAMS, "num_inference_steps": 2, **params})


def run_panorama(config, folder, out, **params):
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"item_id": ["p1", "p2"], "prompt": [t_md.PROMPT, "a beach"]}).to_csv(folder / "p.csv", index=False)
    # 152 px wide: 4 windows of 8 latent pixels (the last one flush with the edge)
    return md.run_panorama_shard(config, "sd", str(folder / "p.csv"), str(out),
                                 {**t_md.PANO, "width": 152, "num_inference_steps": 2, **params})


def run_regions(config, folder, out, **params):
    return md.run_regions_shard(config, "sd", region_inputs(folder), str(out),
                                {**t_md.REGIONS, "num_inference_steps": 2, "bootstrap_steps": 1, **params})


def run_bld(config, folder, out, **params):
    return bld.run_shard(config, "sd", region_inputs(folder), str(out),
                         {**t_rb.PARAMS, "num_inference_steps": 2, **params})


def run_si(config, folder, out, **params):
    return si.run_shard(config, "sd", region_inputs(folder), str(out),
                        {**t_rb.PARAMS, "num_inference_steps": 2, **params}, inpaint_key="sd_inpaint")


# --- faults ----------------------------------------------------------------------------------------

def tamper(monkeypatch, module, key: str, change) -> None:
    """module.load_model gives the model `key` with change(model) applied."""
    real = module.load_model

    def load(config, model_key, *args, **kwargs):
        model = real(config, model_key, *args, **kwargs)
        if model_key == key:
            change(model)
        return model
    monkeypatch.setattr(module, "load_model", load)


def poison(module: torch.nn.Module, after: int = 0) -> None:
    """From its (after + 1)-th call on, `module`'s output (tensor, tuple or output class) is NaN."""
    calls = []

    def hook(_, args, output):
        calls.append(1)
        if len(calls) <= after:
            return None
        if isinstance(output, torch.Tensor):
            return output + float("nan")  # keeps the autograd graph (TCIG stage 1 differentiates)
        if isinstance(output, tuple):
            return (output[0] + float("nan"), *output[1:])
        return type(output)(sample=output.sample + float("nan"))
    module.register_forward_hook(hook)


def out_of_memory_above(unet: torch.nn.Module, latents: int, calls: list) -> None:
    """The UNet raises CUDA out-of-memory when called with more than `latents` latents."""
    def hook(_, args, kwargs):
        n = len(args[0] if args else kwargs["sample"])
        calls.append(n)
        if n > latents:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {n} GiB")
    unet.register_forward_pre_hook(hook, with_kwargs=True)


def unet(after=0):
    return lambda pipe: poison(pipe.unet, after)


ITEM_A0 = r"item a \(base a_00\.png\) sample "
NAN_CASES = {
    # case: (run, module whose load_model is tampered, model key, change, expected error)
    "controlnet": (run_controlnet, cn, "sd", unet(),
                   rf"controlnet regeneration: 2 of 2 image\(s\) of a batch hold NaN or inf \({ITEM_A0}0, {ITEM_A0}1\)"),
    "sdedit": (run_sdedit, se, "sd", unet(), r"sdedit: 1 of 1 image\(s\) of a batch hold NaN or inf \(item i0 sample 0\)"),
    "gradop": (run_gradop, se, "sd", unet(), r"gradop: 1 of 1 image\(s\) of a batch hold NaN or inf \(item i0 sample 0\)"),
    "tcig_stage1": (run_tcig, tcig, "sd", lambda pipe: poison(pipe.vae.decoder),
                    r"tcig stage 1: 1 of 1 image\(s\) of a batch hold NaN or inf \(item a sample 0\)"),
    "tcig_stage2": (run_tcig, tcig, "sd", unet(),
                    r"tcig stage 2: 1 of 1 image\(s\) of a batch hold NaN or inf \(item a sample 0\)"),
    "panorama": (run_panorama, md, "sd", unet(),
                 r"multidiffusion panorama: 1 of 1 image\(s\) of a batch hold NaN or inf \(item p1 sample 0\)"),
    "regions": (run_regions, md, "sd", unet(),
                r"multidiffusion regions: 1 of 1 image\(s\) of a batch hold NaN or inf \(item a sample 0\)"),
    "bld_background": (run_bld, region_editing, "sd", unet(),
                       r"BLD item a sample 0: background generation: 1 of 1 image\(s\) of a batch hold NaN or inf "
                       r"\(background\)"),
    # the background's 2 steps are 2 UNet calls; the edit's are the next ones
    "bld_edit": (run_bld, region_editing, "sd", unet(after=2),
                 r"BLD item a sample 0: bld edit: 1 of 1 image\(s\) of a batch hold NaN or inf "
                 r"\(region prompt 'a dog'\)"),
    "si_edit": (run_si, region_editing, "sd_inpaint", unet(),
                r"SI item a sample 0: si edit: 1 of 1 image\(s\) of a batch hold NaN or inf \(region prompt 'a dog'\)"),
}


@pytest.mark.parametrize("case", list(NAN_CASES))
def test_nan_image_fails_the_shard_and_is_never_saved(case, config, tmp_path, monkeypatch):
    run, module, key, change, message = NAN_CASES[case]
    tamper(monkeypatch, module, key, change)
    out = tmp_path / "shards" / "shard-000"
    with pytest.raises(FloatingPointError, match=message + r": the denoising diverged"):
        run(config, tmp_path / "inputs", out)
    assert_no_output(out)


OOM_CASES = {
    # case: (run, module whose load_model is tampered, job name, batch size parameter, latents per image)
    "controlnet": (run_controlnet, cn, "controlnet regeneration", "batch_size", 2),
    "sdedit": (run_sdedit, se, "sdedit", "batch_size", 2),
    "gradop": (run_gradop, se, "gradop", "batch_size", 2),
    "panorama": (run_panorama, md, "multidiffusion panorama", "view_batch_size", 2),
}


@pytest.mark.parametrize("case", list(OOM_CASES))
def test_out_of_memory_halves_the_batch_and_keeps_the_images(case, config, tmp_path, monkeypatch, caplog):
    run, module, what, size, per_image = OOM_CASES[case]
    reference = run(config, tmp_path / "inputs", tmp_path / "batch1", **{size: 1})
    calls = []
    tamper(monkeypatch, module, "sd", lambda pipe: out_of_memory_above(pipe.unet, per_image, calls))
    with caplog.at_level(logging.WARNING, logger="ctrlbench.batching"):
        manifest = run(config, tmp_path / "inputs", tmp_path / "oom", **{size: 4})
    assert f"{what}: CUDA out of memory with a batch of 4; retrying with a batch of 2" in caplog.text
    assert f"{what}: CUDA out of memory with a batch of 2; retrying with a batch of 1" in caplog.text
    assert calls[:3] == [4 * per_image, 2 * per_image, per_image]
    assert set(calls[2:]) == {per_image}  # the halved size is kept for the rest of the job
    assert manifest.equals(reference)
    oom, one = tree(tmp_path / "oom"), tree(tmp_path / "batch1")
    for files in (oom, one):
        del files["params.json"]  # records the batch size asked for
    assert oom == one  # every image (and the manifest) byte for byte as with batches of one
