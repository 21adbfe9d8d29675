"""Prompts longer than CLIP's 77-token context, encoded in 77-token chunks.

diffusers' `encode_prompt` truncates a prompt to 75 content tokens (77 with BOS/EOS) and
only logs a warning. Long prompts (attribute lists, LLM-expanded captions) lose their tail
that way, so every SD-based method here encodes prompts with `encode_long_prompts`:

* the prompt's content tokens (no BOS/EOS) are split into chunks of 75 tokens;
* each chunk becomes BOS + chunk + EOS, padded to 77 exactly as the tokenizer pads;
* each chunk goes through the text encoder on its own; the chunk embeddings are
  concatenated along the sequence axis: [77 * k, D] for k chunks;
* the negative prompt is chunked the same way, and both sides are padded with empty
  chunks (the encoding of "") to the same k, the largest k of the batch.

A prompt of at most 75 content tokens is one chunk whose ids equal the tokenizer's
`padding="max_length", truncation=True` ids, so its embeddings are exactly diffusers'.

Every distinct chunk is encoded alone (batch 1), so a prompt's embeddings never depend on
which other prompts are encoded with it; identical chunks are encoded once per call.

Two other handlings reproduce the mmm2025 authors' code (docs/fidelity.md), chosen by the
`text_handling` parameter of the sd and controlnet methods:

* "truncate": the first 75 content tokens, as diffusers' `encode_prompt` and ControlNet's
  `FrozenCLIPEmbedder` (truncation=True, max_length=77, padded) do;
* "authors": `stable-diffusion/prompt2img.py`: the prompt file's first line, cut to 800
  characters, tokenized with BOS/EOS and *no* padding or truncation; its ids are cut into
  slices of 77 (so slices after the first have no BOS, and the last one is short), each
  slice encoded on its own and the results concatenated. The negative prompt is padded
  with the pad token to the same number of ids and sliced the same way. A prompt of n
  ids gives embeddings of length n, not 77.
"""

from __future__ import annotations

import math

import torch

TEXT_HANDLING = "chunked-77"  # recorded in params.json by the methods that use this module
# text_handling parameter -> the label params.json records
TEXT_HANDLINGS = {"chunked": TEXT_HANDLING, "truncate": "truncate-77", "authors": "mmm2025-prompt2img-slices"}
AUTHORS_MAX_CHARS = 800  # prompt2img.py: prompt[:min(800, len(prompt))]


def _context_length(tokenizer) -> int:
    return int(tokenizer.model_max_length)


def content_ids(tokenizer, text: str) -> list[int]:
    """The token ids of `text` without BOS/EOS, never truncated."""
    # verbose=False: the "sequence longer than 77" warning is exactly what we handle here.
    return list(tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids)


def count_tokens(tokenizer, text: str) -> int:
    """Number of content tokens of `text` (BOS/EOS not counted).

    Plain CLIP encoding keeps the first `model_max_length - 2` (75) of them.
    """
    return len(content_ids(tokenizer, text))


def n_chunks(tokenizer, text: str) -> int:
    """How many 77-token chunks `text` needs (at least 1, also for "")."""
    per_chunk = _context_length(tokenizer) - 2
    return max(1, math.ceil(count_tokens(tokenizer, text) / per_chunk))


def _padded_chunks(tokenizer, text: str, k: int | None) -> tuple[list[list[int]], list[list[int]]]:
    length = _context_length(tokenizer)
    per_chunk = length - 2
    ids = content_ids(tokenizer, text)
    pieces = [ids[i:i + per_chunk] for i in range(0, len(ids), per_chunk)] or [[]]
    if k is not None:
        if k < len(pieces):
            raise ValueError(f"prompt needs {len(pieces)} chunks, asked for {k}: {text[:80]!r}")
        pieces += [[]] * (k - len(pieces))
    sequences = [[tokenizer.bos_token_id, *piece, tokenizer.eos_token_id] for piece in pieces]
    padded = tokenizer.pad({"input_ids": sequences}, padding="max_length", max_length=length)
    return [list(r) for r in padded["input_ids"]], [list(r) for r in padded["attention_mask"]]


def chunk_ids(tokenizer, text: str, k: int | None = None) -> list[list[int]]:
    """`text` as k chunks of `model_max_length` ids: BOS + <= 75 tokens + EOS + padding.

    k defaults to the number the text needs; a larger k appends empty chunks (BOS EOS pad*).
    """
    return _padded_chunks(tokenizer, text, k)[0]


def truncated_ids(tokenizer, text: str) -> tuple[list[list[int]], list[list[int]]]:
    """One chunk: BOS + the first 75 content tokens + EOS, padded to 77 (diffusers, ldm)."""
    padded = tokenizer(text, padding="max_length", max_length=_context_length(tokenizer), truncation=True,
                       verbose=False)
    return [list(padded["input_ids"])], [list(padded["attention_mask"])]


def authors_prompt(text: str) -> str:
    """What prompt2img.py feeds the tokenizer: the first line of the prompt, <= 800 characters."""
    return text.split("\n", 1)[0][:AUTHORS_MAX_CHARS]


def authors_slices(tokenizer, prompt: str, negative: str) -> tuple[list[list[int]], list[list[int]]]:
    """prompt2img.py's ids: the prompt's full ids (BOS ... EOS, unpadded) and the negative's
    padded to the same length, both cut into consecutive slices of 77 ids."""
    length = _context_length(tokenizer)
    ids = list(tokenizer(authors_prompt(prompt), truncation=False, verbose=False).input_ids)
    negative_ids = list(tokenizer(negative, truncation=False, padding="max_length", max_length=len(ids),
                                  verbose=False).input_ids)
    if len(negative_ids) != len(ids):
        raise ValueError(f"text_handling 'authors': the negative prompt ({len(negative_ids)} ids) is longer "
                         f"than the prompt ({len(ids)} ids); prompt2img.py pads the negative to the prompt's "
                         f"length and cannot cut it: {negative[:80]!r}")
    return ([ids[i:i + length] for i in range(0, len(ids), length)],
            [negative_ids[i:i + length] for i in range(0, len(ids), length)])


@torch.inference_mode()
def encode_long_prompts(tokenizer, text_encoder, prompts: list[str], negative_prompts: list[str] | None,
                        device, handling: str = "chunked") -> tuple[torch.Tensor, torch.Tensor]:
    """(embeds, negative_embeds), both [B, L, D].

    handling "chunked" (default): L = 77 * k with k the largest chunk count; "truncate":
    L = 77; "authors": L = the prompt's id count (one prompt per call, see module docstring).
    `negative_prompts` None means "" for every prompt (as diffusers does for CFG).
    Returned in the text encoder's dtype on `device`, like `encode_prompt`.
    """
    if handling not in TEXT_HANDLINGS:
        raise ValueError(f"unknown text_handling {handling!r} (known: {', '.join(TEXT_HANDLINGS)})")
    prompts = list(prompts)
    negatives = [""] * len(prompts) if negative_prompts is None else list(negative_prompts)
    if len(negatives) != len(prompts):
        raise ValueError(f"{len(negatives)} negative prompts for {len(prompts)} prompts")
    dtype = text_encoder.dtype
    width = text_encoder.config.hidden_size
    if not prompts:
        empty = torch.zeros(0, _context_length(tokenizer), width, dtype=dtype, device=device)
        return empty, empty.clone()
    if handling == "authors" and len(prompts) > 1:
        raise ValueError("text_handling 'authors' gives each prompt its own length: encode one prompt per call")
    k = max(n_chunks(tokenizer, text) for text in prompts + negatives) if handling == "chunked" else None
    use_mask = bool(getattr(text_encoder.config, "use_attention_mask", False))
    cache: dict[tuple[int, ...], torch.Tensor] = {}

    def id_chunks(text: str, side: int) -> tuple[list[list[int]], list]:
        if handling == "chunked":
            return _padded_chunks(tokenizer, text, k)
        if handling == "truncate":
            return truncated_ids(tokenizer, text)
        chunks = authors_slices(tokenizer, prompts[0], negatives[0])[side]  # no attention mask: plain call
        return chunks, [[1] * len(c) for c in chunks]

    def encode(text: str, side: int) -> torch.Tensor:
        out = []
        for ids, mask in zip(*id_chunks(text, side)):
            key = tuple(ids)
            if key not in cache:
                # diffusers passes the mask only to encoders configured with use_attention_mask
                mask = torch.tensor([mask], device=device) if use_mask else None
                hidden = text_encoder(torch.tensor([ids], device=device), attention_mask=mask)[0]
                cache[key] = hidden.to(dtype=dtype, device=device)
            out.append(cache[key])
        return torch.cat(out, dim=1)

    embeds = torch.cat([encode(text, 0) for text in prompts])
    negative_embeds = torch.cat([encode(text, 1) for text in negatives])
    return embeds, negative_embeds

