"""bench/gpu_throughput.py and bench/model_weights.py on CPU: the architectures are SD 1.5's,
the FLOP count adds up, and a tiny smoke run writes every row (the GPU run is measured by
hand on a lent GPU, not here)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import gpu_throughput  # noqa: E402


@pytest.fixture(scope="module")
def sd15_on_meta():
    return gpu_throughput.meta_parts("full")


def parameters(module):
    return sum(p.numel() for p in module.parameters())


def test_full_size_parts_have_sd15s_parameter_counts(sd15_on_meta):
    # The published sizes of runwayml/stable-diffusion-v1-5 and lllyasviel/sd-controlnet-canny.
    assert parameters(sd15_on_meta.unet) == 859_520_964
    assert parameters(sd15_on_meta.vae) == 83_653_863
    assert parameters(sd15_on_meta.text_encoder) == 123_060_480
    assert parameters(sd15_on_meta.controlnet) == 361_279_120


def test_flops_per_image_is_steps_times_guided_forward_plus_one_decode(sd15_on_meta):
    from torch.utils.flop_counter import FlopCounterMode

    pipe = sd15_on_meta
    latent = torch.zeros((1, 4, 64, 64), device="meta")
    text = torch.zeros((1, 77, 768), device="meta")
    with FlopCounterMode(display=False) as unet_forward:
        pipe.unet(latent, torch.tensor(500, device="meta"), encoder_hidden_states=text)
    with FlopCounterMode(display=False) as decode:
        pipe.vae.decode(latent)
    one_unet = unet_forward.get_total_flops()
    assert 0.7e12 < one_unet < 0.9e12  # SD 1.5 at 512²: about 0.8 TFLOP per UNet call
    sd = gpu_throughput.flops_per_image(pipe, "sd", 50, 512)
    assert sd == 50 * 2 * one_unet + decode.get_total_flops()
    controlnet = gpu_throughput.flops_per_image(pipe, "controlnet", 20, 512)
    # 20 steps of UNet + ControlNet (an encoder copy: under half a UNet) cost less than 50 of SD.
    assert 20 * 2 * one_unet + decode.get_total_flops() < controlnet < sd


def test_cpu_smoke_run_writes_every_row(tmp_path):
    out = tmp_path / "gpu.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_throughput.py"), "--size", "tiny", "--device", "cpu",
         "--dtypes", "fp32", "--batch-sizes", "1", "2", "--compile", "off", "--steps-sd", "2",
         "--steps-controlnet", "2", "--height", "64", "--repeats", "1", "--matmul-size", "128", "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["method"], r["batch"]) for r in rows] == [("sd", 1), ("sd", 2), ("controlnet", 1), ("controlnet", 2)]
    for row in rows:
        assert row["images_per_s"] > 0 and row["tflop_per_image"] > 0 and row["peak_memory_gib"] is None
        assert row["bound_ratio"] == pytest.approx(row["images_per_s"] * row["tflop_per_image"]
                                                   / row["flop_bound_tflops"])
    assert "| sd | fp32 | off | 2 |" in result.stdout


def test_model_weights_table_counts_every_configured_architecture():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "model_weights.py")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| SD 1.4 / 1.5 | 1,066.2 M | 1.99 | 3.97 |" in result.stdout
    assert "| Llama-2-7B (ParaDiffusion's text encoder, no LM head) | 6,607.3 M | 12.31 | 24.61 |" in result.stdout
