"""GPU throughput and memory of full-size SD 1.5 architectures with random weights.

Random weights run at the same speed as the real ones: the work depends on the shapes,
not on the values. So the numbers below need no download. For each method (text-to-image
with classifier-free guidance, ControlNet canny regeneration), dtype, batch size and
compile setting, the script times the diffusers pipeline call that ctrlbench's jobs make
(prompt embeddings and initial latents passed in, output_type="np", so the VAE decode
and the copy to the CPU are included; PNG writing is not) and records:

- images/s (median of --repeats timed calls, after one untimed warm-up call that also
  triggers torch.compile);
- peak GPU memory: the method's own weights plus what the timed calls allocate above the
  resident weights (torch.cuda.max_memory_allocated), since both pipelines stay loaded;
- TFLOP per image, counted with torch.utils.flop_counter on one UNet (+ ControlNet)
  forward and one VAE decode, times the steps and the CFG factor;
- the ratio to the FLOP bound: achieved TFLOP/s over a dense matmul's TFLOP/s measured
  on the same GPU and dtype (or --peak-tflops).

  .venv/bin/python bench/gpu_throughput.py                        # on a GPU: the full grid
  .venv/bin/python bench/gpu_throughput.py --size tiny --device cpu --dtypes fp32 \\
      --batch-sizes 1 2 --steps-sd 2 --steps-controlnet 2 --height 64 --out /tmp/g.json

The second line is a CPU smoke run on the tiny stand-ins (tests/test_bench_gpu.py runs it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from machine import machine_info  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PROMPT = "a photo of a red bird with black wings sitting on a branch"


def sd15_parts(size: str):
    """(unet, vae, text_encoder): the SD 1.5 architectures, or the project's tiny stand-ins."""
    from ctrlbench.models import tiny

    if size == "tiny":
        return tiny.tiny_unet(), tiny.tiny_vae(), tiny.tiny_text_encoder()
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    # runwayml/stable-diffusion-v1-5 unet/config.json: diffusers' defaults except these.
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
    vae = AutoencoderKL(  # vae/config.json
        in_channels=3, out_channels=3, latent_channels=4, sample_size=512, layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512))
    text_encoder = CLIPTextModel(CLIPTextConfig(  # openai/clip-vit-large-patch14, text tower
        vocab_size=49408, hidden_size=768, intermediate_size=3072, projection_dim=768,
        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu"))
    return unet, vae, text_encoder


def build_pipelines(size: str, tokenizer_dir: Path, device: str, dtype: torch.dtype):
    """{method: pipeline}: SD text-to-image and SD + ControlNet, sharing one UNet, VAE and
    text encoder, built the way the project builds them (DDIM, no safety checker)."""
    from diffusers import ControlNetModel, StableDiffusionPipeline

    from ctrlbench.methods.controlnet import build_pipeline
    from ctrlbench.models.clip_tokenizer import build_clip_tokenizer
    from ctrlbench.models.tiny import sd_scheduler

    torch.manual_seed(0)
    unet, vae, text_encoder = sd15_parts(size)
    controlnet = ControlNetModel.from_unet(unet)  # the canny ControlNet's architecture
    sd = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=build_clip_tokenizer(tokenizer_dir), unet=unet,
        scheduler=sd_scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    sd.set_progress_bar_config(disable=True)
    sd.to(device, dtype)
    return {"sd": sd, "controlnet": build_pipeline(sd, controlnet.to(device, dtype))}


def weights_gib(module: torch.nn.Module) -> float:
    return sum(p.numel() * p.element_size() for p in module.parameters()) / 2**30


def pipeline_kwargs(pipe, method: str, batch: int, steps: int, height: int, guidance: float) -> dict:
    """The arguments a ctrlbench job passes (methods/sd.py, methods/controlnet.py)."""
    device, dtype = pipe.device, pipe.unet.dtype
    positive, negative = pipe.encode_prompt(PROMPT, device, 1, True, "")
    latents = torch.randn((batch, 4, height // 8, height // 8), generator=torch.Generator().manual_seed(0))
    kwargs = dict(prompt_embeds=positive.repeat(batch, 1, 1), negative_prompt_embeds=negative.repeat(batch, 1, 1),
                  latents=latents.to(device, dtype), num_inference_steps=steps, guidance_scale=guidance,
                  height=height, width=height, output_type="np")
    if method == "controlnet":
        from PIL import Image

        edges = Image.effect_noise((height, height), 64).point(lambda v: 255 * (v > 160)).convert("RGB")
        kwargs.update(image=[edges] * batch, controlnet_conditioning_scale=1.0)
    return kwargs


def meta_parts(size: str) -> SimpleNamespace:
    """The same architectures on PyTorch's meta device: shapes only, for counting FLOPs."""
    from diffusers import ControlNetModel

    with torch.device("meta"):
        unet, vae, text_encoder = sd15_parts(size)
        return SimpleNamespace(unet=unet, vae=vae, text_encoder=text_encoder,
                               controlnet=ControlNetModel.from_unet(unet))


def flops_per_image(parts: SimpleNamespace, method: str, steps: int, height: int) -> float:
    """FLOPs of one image: (UNet [+ ControlNet] forward at batch 2 for CFG) x steps + one
    VAE decode, counted by torch's FlopCounterMode (matmuls, convolutions, attention).
    Counted on the meta device (`meta_parts`), so the count does not depend on which
    attention kernel the GPU picks."""
    from torch.utils.flop_counter import FlopCounterMode

    side = height // 8
    latent = torch.zeros((2, 4, side, side), device="meta")
    text = torch.zeros((2, 77, parts.text_encoder.config.hidden_size), device="meta")
    t = torch.tensor(500, device="meta")
    with FlopCounterMode(display=False) as step:
        residuals = {}
        if method == "controlnet":
            cond = torch.zeros((2, 3, height, height), device="meta")
            down, mid = parts.controlnet(latent, t, encoder_hidden_states=text, controlnet_cond=cond,
                                         return_dict=False)
            residuals = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        parts.unet(latent, t, encoder_hidden_states=text, **residuals)
    with FlopCounterMode(display=False) as decode:
        parts.vae.decode(latent[:1] / parts.vae.config.scaling_factor)
    return step.get_total_flops() * steps + decode.get_total_flops()


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_tflops(device: str, dtype: torch.dtype, n: int, seconds: float = 2.0) -> float:
    """Dense n x n matmul throughput: the practical FLOP bound on this device and dtype."""
    a = torch.randn((n, n), device=device, dtype=dtype)
    b = torch.randn((n, n), device=device, dtype=dtype)
    a @ b
    synchronize(device)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10):
            a @ b
        calls += 10
        synchronize(device)
    return 2 * n**3 * calls / (time.perf_counter() - start) / 1e12


def time_calls(pipe, kwargs: dict, device: str, repeats: int) -> tuple[list[float], float | None]:
    """Seconds of each timed call (after one warm-up call), and the GPU memory the calls
    took above what was allocated before them (activations, workspaces), in GiB. The
    weights of every pipeline built are allocated before, so a method's peak is its own
    weights plus this."""
    cuda = device.startswith("cuda")
    with torch.inference_mode():
        pipe(**kwargs)
        synchronize(device)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            resident = torch.cuda.memory_allocated()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            pipe(**kwargs)
            synchronize(device)
            times.append(time.perf_counter() - start)
    return times, (torch.cuda.max_memory_allocated() - resident) / 2**30 if cuda else None


def compiled(pipe, method: str):
    """A second pipeline on the same modules, with its denoising networks compiled (the
    VAE and text encoder run once per image; compiling them saves little). `pipe` stays
    uncompiled."""
    copy = type(pipe)(**pipe.components, requires_safety_checker=False)
    copy.set_progress_bar_config(disable=True)
    copy.unet = torch.compile(pipe.unet, fullgraph=True)
    if method == "controlnet":
        copy.controlnet = torch.compile(pipe.controlnet, fullgraph=True)
    return copy


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["full", "tiny"], default="full")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--methods", nargs="+", choices=["sd", "controlnet"], default=["sd", "controlnet"])
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["bf16", "fp16"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--compile", nargs="+", choices=["off", "on"], default=["off", "on"])
    parser.add_argument("--steps-sd", type=int, default=50)
    parser.add_argument("--steps-controlnet", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--height", type=int, default=512, help="image side (square)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--matmul-size", type=int, default=8192)
    parser.add_argument("--peak-tflops", type=float, help="FLOP bound to use instead of the measured matmul")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu_throughput.json")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no GPU (use --device cpu --size tiny for a smoke run)")

    info = machine_info()
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    rows = []
    steps = {"sd": args.steps_sd, "controlnet": args.steps_controlnet}
    shapes = meta_parts(args.size)
    flops = {method: flops_per_image(shapes, method, steps[method], args.height) for method in args.methods}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype_name in args.dtypes:
            dtype = DTYPES[dtype_name]
            peak = args.peak_tflops or matmul_tflops(args.device, dtype, args.matmul_size)
            print(f"{dtype_name}: FLOP bound {peak:.1f} TFLOP/s", flush=True)
            pipes = build_pipelines(args.size, Path(tmp, "tokenizer"), args.device, dtype)
            for compile_setting in args.compile:
                for method in args.methods:
                    pipe = pipes[method]
                    attention = sorted({type(p).__name__ for p in pipe.unet.attn_processors.values()})
                    weights = sum(weights_gib(module) for module in (pipe.unet, pipe.vae, pipe.text_encoder))
                    if method == "controlnet":
                        weights += weights_gib(pipe.controlnet)
                    if compile_setting == "on":
                        pipe = compiled(pipe, method)
                    for batch in args.batch_sizes:
                        kwargs = pipeline_kwargs(pipe, method, batch, steps[method], args.height, args.guidance)
                        times, above_weights = time_calls(pipe, kwargs, args.device, args.repeats)
                        images_per_s = batch / statistics.median(times)
                        row = {"method": method, "dtype": dtype_name, "compile": compile_setting, "batch": batch,
                               "steps": steps[method], "height": args.height, "images_per_s": images_per_s,
                               "call_s": times, "weights_gib": weights, "activations_gib": above_weights,
                               "peak_memory_gib": None if above_weights is None else weights + above_weights,
                               "tflop_per_image": flops[method] / 1e12, "flop_bound_tflops": peak,
                               "bound_ratio": images_per_s * flops[method] / 1e12 / peak,
                               "attention_processors": attention}
                        rows.append(row)
                        memory_text = f"{row['peak_memory_gib']:.2f} GiB" if above_weights is not None else "n/a"
                        print(f"{method:10s} {dtype_name} compile={compile_setting:3s} batch {batch:2d}: "
                              f"{images_per_s:.3f} img/s, {row['tflop_per_image']:.3g} TFLOP/img, "
                              f"{100 * row['bound_ratio']:.0f}% of bound, peak {memory_text}", flush=True)
            del pipes, pipe
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()

    print("\n| method | dtype | torch.compile | batch | img/s | TFLOP/img | % of FLOP bound | peak GPU GiB |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        memory_text = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "n/a"
        print(f"| {r['method']} | {r['dtype']} | {r['compile']} | {r['batch']} | {r['images_per_s']:.2f} | "
              f"{r['tflop_per_image']:.3g} | {100 * r['bound_ratio']:.0f}% | {memory_text} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "gpu_throughput", "machine": info,
                                    "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
