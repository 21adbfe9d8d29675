"""The real CLIP BPE tokenizer, built offline from the vocabulary that open_clip ships.

Stable Diffusion's tokenizer (openai/clip-vit-large-patch14) is the OpenAI CLIP BPE:
256 byte symbols, the same 256 with the end-of-word marker "</w>", 48,894 merges and
two special tokens = 49,408 ids. open_clip bundles the merges list
(bpe_simple_vocab_16e6.txt.gz), so the exact tokenizer can be rebuilt without a
download and saved in the transformers format that diffusers pipelines load.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MODEL_MAX_LENGTH = 77
# open_clip's SimpleTokenizer keeps merges[1 : 49152 - 256 - 2 + 1]: line 0 is a header.
N_MERGES = 49152 - 256 - 2
VOCAB_SIZE = 2 * 256 + N_MERGES + 2  # 49408


def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """The CLIP vocabulary (token -> id) and merge rules ("a b"), in id order."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    with gzip.open(default_bpe(), "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    merges = lines[1:N_MERGES + 1]
    byte_symbols = list(bytes_to_unicode().values())
    tokens = (byte_symbols + [s + "</w>" for s in byte_symbols]
              + ["".join(m.split()) for m in merges] + [BOS, EOS])
    if len(tokens) != VOCAB_SIZE or len(set(tokens)) != VOCAB_SIZE:
        raise RuntimeError(f"open_clip's BPE file {default_bpe()} does not give the "
                           f"{VOCAB_SIZE}-token CLIP vocabulary (got {len(set(tokens))})")
    return {tok: i for i, tok in enumerate(tokens)}, merges


def write_bpe_files(out_dir: str | Path) -> None:
    """Write vocab.json and merges.txt, the files every CLIP tokenizer class can read
    (transformers 4's slow CLIPTokenizer needs them; transformers 5 reads tokenizer.json)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges()
    with open(out_dir / "vocab.json", "w", encoding="utf-8") as fh:
        json.dump(vocab, fh, ensure_ascii=False)
    with open(out_dir / "merges.txt", "w", encoding="utf-8") as fh:
        fh.write("#version: 0.2\n" + "\n".join(merges) + "\n")


def build_clip_tokenizer(out_dir: str | Path):
    """Build the CLIP tokenizer into `out_dir` (vocab.json, merges.txt and the
    transformers files) and return it as a transformers CLIPTokenizer."""
    from transformers import CLIPTokenizer

    out_dir = Path(out_dir)
    write_bpe_files(out_dir)
    tokenizer = CLIPTokenizer.from_pretrained(
        str(out_dir), model_max_length=MODEL_MAX_LENGTH, pad_token=EOS, local_files_only=True)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer
