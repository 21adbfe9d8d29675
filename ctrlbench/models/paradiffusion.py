"""ParaDiffusion weights: a Llama-2 text encoder with a LoRA adapter, and an SD-style
denoiser (UNet + SDXL fp16-fix VAE + DPMSolver multistep) that reads its features.

The released weights are one folder (38.5 GB) laid out as

    Llama-2-7b-hf/        transformers LlamaModel + its tokenizer (meta-llama/Llama-2-7b-hf)
    text_encoder_lora/    PEFT LoRA adapter of that LlamaModel
    unet/                 diffusers UNet2DConditionModel, cross_attention_dim 4096
    sdxl-vae-fp16-fix/    diffusers AutoencoderKL (madebyollin/sdxl-vae-fp16-fix)
    scheduler/            diffusers DPMSolverMultistepScheduler config

`locate_weights` checks that layout and names every missing folder in one error. The
text encoder and the denoiser load separately (`load_text_encoder`, `load_denoiser`),
so a job can encode all its prompts, free the 7B model and only then load the UNet:
peak GPU memory is the larger of the two, not their sum.

The tiny stand-in (`build_tiny_paradiffusion`) has the same layout: a 2-layer LlamaModel
with hidden size TINY_HIDDEN_SIZE and a tokenizer trained here, a random (non-zero) LoRA
adapter on q_proj / v_proj, a tiny UNet whose cross_attention_dim equals that hidden
size, a tiny x8 VAE with the SDXL VAE's scaling factor, and a DPMSolver config.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelNotFoundError
from ..methods.registry import PARADIFFUSION_PLACEMENTS as PLACEMENTS

log = logging.getLogger(__name__)

LLAMA, LORA, UNET, VAE, SCHEDULER = ("Llama-2-7b-hf", "text_encoder_lora", "unet", "sdxl-vae-fp16-fix",
                                      "scheduler")
# Folder -> the file that shows it is complete, and where to get it.
LAYOUT = {
    LLAMA: ("config.json", "`hf download meta-llama/Llama-2-7b-hf --local-dir <weights>/Llama-2-7b-hf` "
                           "(gated: accept the licence on Hugging Face and `hf auth login` first)"),
    LORA: ("adapter_config.json", "the ParaDiffusion release (https://github.com/weijiawu/ParaDiffusion, "
                                  "'Download Models')"),
    UNET: ("config.json", "the ParaDiffusion release (https://github.com/weijiawu/ParaDiffusion)"),
    VAE: ("config.json", "`hf download madebyollin/sdxl-vae-fp16-fix --local-dir <weights>/sdxl-vae-fp16-fix`"),
    SCHEDULER: ("scheduler_config.json", "the ParaDiffusion release (https://github.com/weijiawu/ParaDiffusion)"),
}

TINY_HIDDEN_SIZE = 48  # differs from the tiny CLIP's 32, so a wrong feature path cannot pass by accident
SDXL_VAE_SCALING = 0.13025
TINY_LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}


@dataclass
class ParaDiffusionWeights:
    """A checked ParaDiffusion weights folder (see the module docstring)."""

    root: Path
    key: str = ""

    def folder(self, name: str) -> Path:
        return self.root / name


def locate_weights(root, key: str = "") -> ParaDiffusionWeights:
    """The weights folder `root`, with every required sub-folder present.

    Raises ModelNotFoundError listing all missing (or incomplete) folders and where to get
    each one.
    """
    root = Path(root).expanduser()
    what = f"model '{key}' (kind paradiffusion)" if key else "ParaDiffusion weights"
    if not root.is_dir():
        raise ModelNotFoundError(
            f"{what}: {root} is not a folder. It must hold {', '.join(f'{n}/' for n in LAYOUT)}; "
            + "; ".join(f"{name}/ from {how}" for name, (_, how) in LAYOUT.items()))
    missing = [(name, marker, how) for name, (marker, how) in LAYOUT.items()
               if not (root / name / marker).is_file()]
    if missing:
        lines = [f"{name}/ ({'no ' + marker if (root / name).is_dir() else 'missing'}): get it from {how}"
                 for name, marker, how in missing]
        raise ModelNotFoundError(f"{what}: {root} lacks {len(missing)} of the {len(LAYOUT)} weight folders:\n  "
                                 + "\n  ".join(lines))
    return ParaDiffusionWeights(root, key)


# --- text encoder ------------------------------------------------------------------------

@dataclass
class ParagraphEncoder:
    """Llama (+ LoRA) paragraph features: the final layer's hidden states of every position.

    As in ParaDiffusion's pipeline: the tokenizer pads with EOS to `max_length` and
    truncates; the attention mask goes to the Llama only (the UNet attends to all
    `max_length` positions, padding included).
    """

    model: torch.nn.Module
    tokenizer: object
    max_length: int
    device: str            # where the input ids go (the first layer's device)
    hidden_size: int

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` including BOS, never truncated (what max_length cuts)."""
        return len(self.tokenizer(text, truncation=False, verbose=False).input_ids)

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """[len(texts), max_length, hidden_size] features (float32 on the CPU)."""
        if not texts:
            return torch.zeros(0, self.max_length, self.hidden_size)
        batch = self.tokenizer(list(texts), padding="max_length", max_length=self.max_length,
                               truncation=True, return_tensors="pt")
        hidden = self.model(input_ids=batch.input_ids.to(self.device),
                            attention_mask=batch.attention_mask.to(self.device)).last_hidden_state
        return hidden.float().cpu()


def load_text_encoder(weights: ParaDiffusionWeights, device: str, dtype: torch.dtype,
                      placement: str = "device", max_length: int = 256) -> ParagraphEncoder:
    """The LlamaModel with its LoRA adapter applied, placed as `placement` says:

    device      all of it on `device`
    cpu         all of it on the CPU (no GPU memory; slow for a 7B model)
    offload     weights in CPU memory, each layer moved to `device` when it runs (accelerate)
    device_map  layers spread over the visible GPUs, the rest in CPU memory (device_map="auto")
    """
    from peft import PeftModel
    from transformers import AutoTokenizer, LlamaModel

    if placement not in PLACEMENTS:
        raise ValueError(f"text_encoder_placement '{placement}': choose one of {', '.join(PLACEMENTS)}")
    llama_dir, lora_dir = weights.folder(LLAMA), weights.folder(LORA)
    tokenizer = AutoTokenizer.from_pretrained(str(llama_dir))
    tokenizer.pad_token = tokenizer.eos_token  # as ParaDiffusion: Llama-2 has no pad token
    tokenizer.model_max_length = max_length
    kwargs = {"dtype": dtype}
    if placement == "device_map":
        kwargs["device_map"] = "auto"
    model = LlamaModel.from_pretrained(str(llama_dir), **kwargs)
    model = PeftModel.from_pretrained(model, str(lora_dir)).eval().requires_grad_(False)
    input_device = device
    if placement == "device":
        model = model.to(device)
    elif placement == "cpu":
        input_device = "cpu"
    elif placement == "offload":
        from accelerate import cpu_offload

        cpu_offload(model, execution_device=torch.device(device))
    else:  # device_map: inputs go where the embedding layer was put
        input_device = str(next(model.parameters()).device)
    return ParagraphEncoder(model, tokenizer, max_length, input_device, model.config.hidden_size)


def release_memory() -> None:
    """Give the memory of models the caller has just dropped back (GPU cache included)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- denoiser ----------------------------------------------------------------------------------

def load_denoiser(weights: ParaDiffusionWeights, device: str, dtype: torch.dtype):
    """A diffusers StableDiffusionPipeline of the UNet, VAE and scheduler, without a text
    encoder: it is called with `prompt_embeds` (the paragraph features)."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(weights.folder(UNET)), dtype=dtype)
    vae = AutoencoderKL.from_pretrained(str(weights.folder(VAE)), dtype=dtype)
    scheduler = DPMSolverMultistepScheduler.from_pretrained(str(weights.folder(SCHEDULER)))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- tiny stand-in ----------------------------------------------------------------------------

def build_tiny_paradiffusion(out) -> None:
    """Write the tiny ParaDiffusion weights folder (module docstring) into `out`.
    Deterministic given torch.manual_seed (the caller seeds)."""
    from diffusers import DPMSolverMultistepScheduler, UNet2DConditionModel
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaModel

    from .llm import tiny_llama_config, train_tiny_tokenizer
    from .tiny import tiny_vae

    out = Path(out)
    tokenizer = train_tiny_tokenizer(out / LLAMA)
    llama = LlamaModel(tiny_llama_config(tokenizer, hidden_size=TINY_HIDDEN_SIZE, num_attention_heads=4,
                                         num_key_value_heads=4))
    llama.save_pretrained(str(out / LLAMA), safe_serialization=True)
    # init_lora_weights=False: random A and B, so the adapter changes the features (PEFT's
    # default B = 0 would make it a no-op, hiding a LoRA that failed to load).
    lora = get_peft_model(llama, LoraConfig(**TINY_LORA, init_lora_weights=False))
    lora.save_pretrained(str(out / LORA), safe_serialization=True)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_HIDDEN_SIZE, attention_head_dim=(2, 4), norm_num_groups=16)
    unet.save_pretrained(str(out / UNET), safe_serialization=True)
    vae = tiny_vae()
    vae.register_to_config(scaling_factor=SDXL_VAE_SCALING, force_upcast=False)  # as sdxl-vae-fp16-fix
    vae.save_pretrained(str(out / VAE), safe_serialization=True)
    DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                beta_schedule="scaled_linear", steps_offset=1).save_pretrained(str(out / SCHEDULER))
