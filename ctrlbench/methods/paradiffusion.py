"""ParaDiffusion paragraph-to-image generation (SPECS section 5, docs/methods/paradiffusion.md).

One job per shard:
1. load the Llama-2 text encoder with its LoRA adapter and encode every distinct prompt
   (and the negative prompt) once: the final layer's hidden states of all
   `max_text_tokens` positions, EOS-padded and truncated as ParaDiffusion's tokenizer does;
2. free the encoder, then load the UNet, VAE and DPMSolver scheduler, so the 7B encoder
   and the UNet are never in GPU memory together;
3. denoise with the features as `encoder_hidden_states` through the same batched loop,
   per-prompt noise and manifest as plain SD (`sd.generate`).
Prompts longer than `max_text_tokens` are cut, as in the original; params.json records
how many were and by how much, and the job log names them.
"""

from __future__ import annotations

import logging

import pandas as pd
import torch

from .. import io
from ..config import resolve_device, resolve_dtype
from ..models.loaders import load_model
from ..models.paradiffusion import load_denoiser, load_text_encoder, release_memory
from . import sd

log = logging.getLogger(__name__)

TEXT_HANDLING = "llama-truncate"  # one sequence of max_text_tokens, the tail cut


def encoder_dtype(params: dict, job_dtype: torch.dtype) -> torch.dtype:
    """text_encoder_dtype "auto" = the job dtype, but float32 when the encoder runs on the CPU."""
    name = params["text_encoder_dtype"]
    if name == "auto":
        return torch.float32 if params["text_encoder_placement"] == "cpu" else job_dtype
    return getattr(torch, name)


def encode_prompts(encoder, prompts: list[str], negative_prompt: str, batch_size: int) -> dict[str, tuple]:
    """{prompt: (features [1, L, H], negative features [1, L, H])}, each distinct text
    encoded once, `batch_size` texts per Llama call."""
    texts = list(dict.fromkeys([*prompts, negative_prompt or ""]))
    features = torch.cat([encoder.encode(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)])
    by_text = {text: features[i:i + 1] for i, text in enumerate(texts)}
    negative = by_text[negative_prompt or ""]
    return {prompt: (by_text[prompt], negative) for prompt in dict.fromkeys(prompts)}


def truncation_report(encoder, prompts: pd.DataFrame) -> dict:
    """How many prompts exceed the encoder's max_length, and which (for params.json)."""
    counts = {row.item_id: encoder.count_tokens(row.prompt) for row in prompts.itertuples(index=False)}
    over = {item: n for item, n in counts.items() if n > encoder.max_length}
    for item, n in over.items():
        log.warning("item %s: prompt has %d tokens, the last %d are cut at max_text_tokens=%d",
                    item, n, n - encoder.max_length, encoder.max_length)
    return {"max_text_tokens": encoder.max_length, "longest_prompt_tokens": max(counts.values(), default=0),
            "n_prompts_truncated": len(over), "truncated_items": over}


def run_shard(config: dict, model_key: str, prompts_csv: str, out_dir: str, params: dict) -> pd.DataFrame:
    """One job: encode the shard's prompts, free the encoder, generate; params.json and the
    manifest written last, the folder renamed into place only on success."""
    prompts = pd.read_csv(prompts_csv, dtype={"item_id": str}, keep_default_na=False)
    device = resolve_device(config)
    dtype = resolve_dtype(config, device)
    text_dtype = encoder_dtype(params, dtype)
    text = {}
    with io.atomic_dir(out_dir) as tmp:
        if len(prompts):
            weights = load_model(config, model_key, device=device, dtype=dtype)  # checks the folder
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats(device)
            encoder = load_text_encoder(weights, device, text_dtype, params["text_encoder_placement"],
                                        params["max_text_tokens"])
            text = truncation_report(encoder, prompts)
            embeds = encode_prompts(encoder, prompts["prompt"].tolist(), params["negative_prompt"],
                                    params["batch_size"])
            del encoder
            release_memory()
            pipe = load_denoiser(weights, device, dtype)
            manifest = sd.generate(pipe, prompts, params, tmp, embeds=embeds)
        else:
            manifest = pd.DataFrame(columns=sd.MANIFEST_COLUMNS)
        peak = (round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                if device.startswith("cuda") and len(prompts) else None)
        io.write_json(tmp / "params.json", io.provenance(
            method="paradiffusion", params=params, model={model_key: config["models"][model_key]},
            device=device, dtype=str(dtype), text_encoder_dtype=str(text_dtype), text_handling=TEXT_HANDLING,
            text_tokens=text, peak_gpu_memory_gib=peak, torch_threads=torch.get_num_threads(),
            n_items=len(prompts)))
        io.write_csv(tmp / "manifest.csv", manifest)
    return manifest
