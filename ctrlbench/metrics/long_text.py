"""CLIP text embeddings of texts longer than CLIP's 77-token context (open_clip models).

Two ways to embed a text, each a separate metric (see docs/metrics.md):

  truncate  open_clip's own tokenisation: [sot] + the first 75 content tokens + [eot],
            padded with 0 to 77 (`ClipModel.encode_texts`). The tail is ignored.
  chunked   the content tokens are split into consecutive chunks of at most
            context_length - 2 (75) tokens; each chunk becomes [sot] + chunk + [eot]
            padded with 0 to context_length and goes through the CLIP text tower; the text
            embedding is the L2-normalised token-count-weighted mean of the L2-normalised
            chunk embeddings. A text of <= 75 tokens is one chunk, so its chunked
            embedding is its truncate embedding.

Chunking needs open_clip's CLIP BPE tokenizer (`open_clip.tokenizer.SimpleTokenizer`);
other tokenizers (e.g. `HFTokenizer` of SigLIP-style models) raise an error instead of
silently truncating. The same conventions as `ctrlbench.prompts.long_prompt`, which
chunks prompts for SD's (Hugging Face) CLIP tokenizer.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InputError

LONG_TEXT = ("truncate", "chunked")
METRIC_NAMES = {"truncate": "t_sim", "chunked": "t_sim_chunked"}  # metric name per variant
CACHE_ARRAYS = {"truncate": "emb", "chunked": "emb_chunked"}      # array in the prompt cache


def check_long_text(long_text) -> tuple[str, ...]:
    """The requested variants as a tuple; unknown or no variants raise ValueError."""
    variants = tuple(long_text)
    unknown = sorted(set(variants) - set(LONG_TEXT))
    if unknown or not variants:
        raise ValueError(f"long_text must be a non-empty list of {list(LONG_TEXT)}, got {list(variants)}")
    return variants


def is_clip_bpe(tokenizer) -> bool:
    """Whether `tokenizer` is open_clip's CLIP BPE tokenizer (or behaves like one)."""
    return all(hasattr(tokenizer, name) for name in ("encode", "sot_token_id", "eot_token_id", "context_length"))


def _clip_bpe(tokenizer):
    if not is_clip_bpe(tokenizer):
        raise InputError(
            f"long_text 'chunked' needs open_clip's CLIP BPE tokenizer (SimpleTokenizer with encode, "
            f"sot_token_id, eot_token_id, context_length); this model's tokenizer is "
            f"{type(tokenizer).__module__}.{type(tokenizer).__name__}, which cannot be chunked. "
            f"Use evaluation.clip.long_text: [truncate] with this model")
    return tokenizer


def content_ids(tokenizer, text: str) -> list[int]:
    """The CLIP BPE ids of `text` (after open_clip's text cleaning), without sot/eot, never truncated."""
    return list(_clip_bpe(tokenizer).encode(text))


def _per_chunk(tokenizer) -> int:
    return int(tokenizer.context_length) - 2


def count_tokens(tokenizer, text: str) -> tuple[int, int]:
    """(content tokens, chunks needed) of `text`; "" is 0 tokens in 1 chunk."""
    n = len(content_ids(tokenizer, text))
    return n, max(1, math.ceil(n / _per_chunk(tokenizer)))


def _pieces(tokenizer, text: str) -> list[list[int]]:
    """The content ids of `text` in consecutive pieces of at most 75; "" is one empty piece."""
    ids, per_chunk = content_ids(tokenizer, text), _per_chunk(tokenizer)
    return [ids[i:i + per_chunk] for i in range(0, len(ids), per_chunk)] or [[]]


def _padded(tokenizer, piece: list[int]) -> list[int]:
    row = [tokenizer.sot_token_id, *piece, tokenizer.eot_token_id]
    return row + [0] * (int(tokenizer.context_length) - len(row))


def chunk_ids(tokenizer, text: str) -> list[list[int]]:
    """`text` as chunks of context_length ids: [sot] + <= 75 content tokens + [eot] + 0 padding."""
    return [_padded(tokenizer, piece) for piece in _pieces(tokenizer, text)]


def encode_chunk_rows(clip, rows: list[list[int]], batch_size: int = 32) -> np.ndarray:
    """L2-normalised CLIP text-tower embeddings of already tokenised rows, float32 [N, D]."""
    import torch  # here, not at the top: metric jobs that only read caches skip torch's import

    ids = torch.tensor(rows, dtype=torch.long)
    with torch.no_grad():
        out = [clip.model.encode_text(ids[i:i + batch_size].to(clip.device)).float().cpu()
               for i in range(0, len(ids), batch_size)]
    if not out:
        return np.zeros((0, clip.embed_dim), np.float32)
    return torch.nn.functional.normalize(torch.cat(out), dim=-1).numpy()


def encode_chunked(clip, texts: list[str], batch_size: int = 32) -> np.ndarray:
    """Chunked embeddings (module docstring) of `texts`, float32 [N, D], L2-normalised.

    `clip` is a `ctrlbench.models.loaders.ClipModel`. All chunks of all texts are encoded
    together, `batch_size` chunks at a time.
    """
    tokenizer = _clip_bpe(clip.tokenizer)
    per_text = [_pieces(tokenizer, text) for text in texts]
    rows = [_padded(tokenizer, piece) for pieces in per_text for piece in pieces]
    chunk_emb = encode_chunk_rows(clip, rows, batch_size).astype(np.float64)
    out, start = [], 0
    for pieces in per_text:
        # Weight = the chunk's content tokens; "" has one empty chunk, which then weighs 1.
        weights = np.array([max(1, len(piece)) for piece in pieces], np.float64)
        mean = weights @ chunk_emb[start:start + len(pieces)]
        out.append(mean / np.linalg.norm(mean))
        start += len(pieces)
    return np.array(out, np.float32).reshape(len(texts), chunk_emb.shape[1])
