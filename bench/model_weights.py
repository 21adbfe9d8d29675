"""Parameter counts and weight memory of the real models the configs name.

Each architecture is built on PyTorch's meta device (shapes only: no memory, no download)
from its published configuration, and its parameters are counted. The weights' memory is
then exact for each dtype; activations come on top (docs/slurm.md, GPU memory per method).

  .venv/bin/python bench/model_weights.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402


def sd2_parts(in_channels: int = 4):
    """stabilityai/stable-diffusion-2-base (and -inpainting: 9 UNet input channels)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(sample_size=64, in_channels=in_channels, cross_attention_dim=1024,
                                attention_head_dim=(5, 10, 20, 20), use_linear_projection=True)
    text_encoder = CLIPTextModel(CLIPTextConfig(  # OpenCLIP ViT-H/14 text tower, 23 of 24 layers
        vocab_size=49408, hidden_size=1024, intermediate_size=4096, projection_dim=512,
        num_hidden_layers=23, num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu"))
    return unet, text_encoder


def architectures() -> dict[str, dict[str, torch.nn.Module]]:
    """{model: {part: module}}, built on the meta device."""
    import open_clip
    import torchvision
    from diffusers import ControlNetModel
    from transformers import LlamaConfig, LlamaModel

    from gpu_throughput import sd15_parts

    with torch.device("meta"):
        unet, vae, text_encoder = sd15_parts("full")
        sd2_unet, sd2_text = sd2_parts()
        sd2_inpaint_unet, _ = sd2_parts(in_channels=9)
        return {
            "SD 1.4 / 1.5": {"unet": unet, "vae": vae, "text encoder": text_encoder},
            "ControlNet canny (SD 1.5)": {"controlnet": ControlNetModel.from_unet(unet)},
            "SD 2.0 base": {"unet": sd2_unet, "vae": vae, "text encoder": sd2_text},
            "SD 2.0 inpainting": {"unet": sd2_inpaint_unet, "vae": vae, "text encoder": sd2_text},
            "CLIP ViT-L/14 (open_clip)": {"model": open_clip.create_model("ViT-L-14-quickgelu", device="meta")},
            "CLIP ViT-B/32 (open_clip)": {"model": open_clip.create_model("ViT-B-32-quickgelu", device="meta")},
            "DeepLabV3-ResNet50": {"model": torchvision.models.segmentation.deeplabv3_resnet50(
                weights=None, weights_backbone=None, num_classes=21, aux_loss=True)},
            "Llama-2-7B (ParaDiffusion's text encoder, no LM head)": {"model": LlamaModel(LlamaConfig())},
        }


def main() -> int:
    print("| model | parameters | fp16 / bf16 GiB | fp32 GiB |")
    print("|---|---:|---:|---:|")
    for name, parts in architectures().items():
        count = sum(p.numel() for module in parts.values() for p in module.parameters())
        print(f"| {name} | {count / 1e6:,.1f} M | {2 * count / 2**30:.2f} | {4 * count / 2**30:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
