"""Real base images by retrieval (mmm2025): for each query item, the best image of a
gallery (the train split) — see docs/methods/retrieval.md.

Strategies (params["strategy"], default in methods.registry.RETRIEVAL_DEFAULTS):

* "attribute": CUB only. The gallery image whose 312-entry attribute vector has the most
  entries equal to the query item's (1 present, 0 absent, -1 not visible: -1 is a value
  like the others).
* "text": the query prompt against every gallery caption (cosine of normalised text
  embeddings, MiniLM or CLIP text); a gallery image scores the max over its captions.
  Gallery images without captions get one text made of their class name and attributes
  (recorded as text_source "class_attributes").

Both break ties towards the lowest gallery index, i.e. the first row of the gallery table.
The gallery caption embeddings are computed once per (dataset, embedder) by
`embed_gallery` and read from its .npz by every `retrieve_shard` job.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from .. import io
from ..errors import ConfigError, InputError

log = logging.getLogger(__name__)

STRATEGIES = ("attribute", "text")
TEXT_KINDS = ("text_embedder", "open_clip")
MANIFEST_COLUMNS = ["item_id", "sample", "image", "prompt", "seed", "class_name", "source_image",
                    "retrieved_item_id", "retrieval_score", "strategy", "text_source"]
CAPTIONS, CLASS_ATTRIBUTES, ATTRIBUTE_VECTOR = "captions", "class_attributes", "attribute_vector"
QUERY_CHUNK = 256        # queries scored at a time: bounds memory to QUERY_CHUNK x gallery floats
TIE_TOLERANCE = 1e-6     # text scores this close to the best count as ties (float noise)
ENCODE_BATCH = 64


# --- scoring ----------------------------------------------------------------------------------

def attribute_retrieve(query_vectors: np.ndarray, gallery_vectors: np.ndarray,
                       chunk: int = QUERY_CHUNK * 2) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the gallery row with the most equal entries.

    Returns (indices int64 [Q], scores int64 [Q] = the number of equal entries). Ties go to
    the lowest gallery index. Counted as one-hot matrix products per distinct value (three
    for CUB: -1, 0, 1), `chunk` queries at a time, so memory is O(chunk x G).
    """
    query = np.asarray(query_vectors)
    gallery = np.asarray(gallery_vectors)
    if query.ndim != 2 or gallery.ndim != 2 or query.shape[1] != gallery.shape[1]:
        raise ValueError(f"attribute vectors must be [Q, A] and [G, A] with the same A, got "
                         f"{query.shape} and {gallery.shape}")
    if len(gallery) == 0:
        raise ValueError("attribute retrieval: the gallery is empty")
    values = np.unique(np.concatenate([np.unique(query), np.unique(gallery)]))
    # float32 products are exact: counts never exceed A (312 << 2**24).
    gallery_hot = [(gallery == value).astype(np.float32).T for value in values]
    indices = np.empty(len(query), dtype=np.int64)
    scores = np.empty(len(query), dtype=np.int64)
    for start in range(0, len(query), chunk):
        block = query[start:start + chunk]
        counts = np.zeros((len(block), len(gallery)), dtype=np.float32)
        for value, hot in zip(values, gallery_hot):
            counts += (block == value).astype(np.float32) @ hot
        best = counts.argmax(axis=1)  # argmax returns the first maximum: lowest index
        indices[start:start + chunk] = best
        scores[start:start + chunk] = counts[np.arange(len(block)), best].astype(np.int64)
    return indices, scores


def text_retrieve(query_emb, gallery_emb, owners, n_gallery: int | None = None,
                  chunk: int = QUERY_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """For each query embedding, the gallery image with the most similar caption.

    query_emb [Q, D] and gallery_emb [C, D] are L2-normalised (torch or numpy); owners [C]
    maps caption row -> gallery image index. An image's score is the max cosine over its
    captions; the best image wins, ties (within TIE_TOLERANCE) to the lowest index. Returns
    (indices int64 [Q], scores float32 [Q]). Images without captions are never returned.
    """
    query = _as_float32(query_emb)
    gallery = _as_float32(gallery_emb)
    owners = np.asarray(owners, dtype=np.int64)
    if query.ndim != 2 or gallery.ndim != 2 or query.shape[1] != gallery.shape[1]:
        raise ValueError(f"embeddings must be [Q, D] and [C, D] with the same D, got "
                         f"{query.shape} and {gallery.shape}")
    if owners.shape != (len(gallery),):
        raise ValueError(f"owners must have one entry per caption row ({len(gallery)}), got {owners.shape}")
    if len(gallery) == 0:
        raise ValueError("text retrieval: the gallery has no captions")
    n_gallery = int(owners.max()) + 1 if n_gallery is None else n_gallery
    if owners.min() < 0 or owners.max() >= n_gallery:
        raise ValueError(f"owners must lie in [0, {n_gallery})")
    order = np.argsort(owners, kind="stable")
    sorted_owners = owners[order]
    starts = np.flatnonzero(np.r_[True, sorted_owners[1:] != sorted_owners[:-1]])
    images = sorted_owners[starts]
    gallery_t = np.ascontiguousarray(gallery[order].T)
    indices = np.empty(len(query), dtype=np.int64)
    scores = np.empty(len(query), dtype=np.float32)
    for start in range(0, len(query), chunk):
        sims = query[start:start + chunk] @ gallery_t                      # [B, C]
        per_image = np.full((len(sims), n_gallery), -np.inf, dtype=np.float32)
        per_image[:, images] = np.maximum.reduceat(sims, starts, axis=1)   # max over captions
        best = per_image.max(axis=1, keepdims=True)
        chosen = (per_image >= best - TIE_TOLERANCE).argmax(axis=1)         # first near-best
        indices[start:start + chunk] = chosen
        scores[start:start + chunk] = per_image[np.arange(len(sims)), chosen]
    return indices, scores


def _as_float32(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


# --- tables -----------------------------------------------------------------------------------

def attribute_vectors(frame: pd.DataFrame, where: str) -> np.ndarray:
    """int8 [N, A] from the comma-joined attribute_vector column."""
    rows = []
    for item_id, text in zip(frame["item_id"], frame["attribute_vector"]):
        try:
            rows.append(np.array([int(v) for v in str(text).split(",")], dtype=np.int8))
        except ValueError:
            raise InputError(f"{where}: item {item_id} has no usable attribute_vector ({str(text)[:40]!r})") from None
    if len({len(row) for row in rows}) > 1:
        raise InputError(f"{where}: attribute vectors of different lengths {sorted({len(r) for r in rows})}")
    return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.int8)


def fallback_text(class_name: str, attributes: list[str]) -> str:
    """The text of a gallery image without captions: its class name and attributes,
    worded like the template prompts ('a photo of X, with has wing color::black, ...')."""
    from ..prompts.templates import format_attribute

    text = f"a photo of {class_name}".strip() if str(class_name).strip() else ""
    if attributes:
        listed = ", ".join(format_attribute(a) for a in attributes)
        text = f"{text}, with {listed}" if text else listed
    return text


def gallery_texts(gallery: pd.DataFrame) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """(texts, owners, caption_index, text_source per image) for a gallery items table.

    Each image contributes its captions (caption_index 0..n-1); an image without captions
    contributes one class-name-and-attributes text (caption_index -1, text_source
    "class_attributes").
    """
    texts, owners, caption_index, sources = [], [], [], []
    for index, row in enumerate(gallery.itertuples(index=False)):
        captions = [c for c in json.loads(row.captions or "[]") if str(c).strip()]
        if captions:
            texts += captions
            caption_index += range(len(captions))
            sources.append(CAPTIONS)
        else:
            text = fallback_text(row.class_name, json.loads(getattr(row, "attributes", "") or "[]"))
            if not text:
                raise InputError(f"gallery item {row.item_id} has no captions, class name or attributes: "
                                 f"nothing to retrieve it by text")
            texts.append(text)
            caption_index.append(-1)
            sources.append(CLASS_ATTRIBUTES)
        owners += [index] * (len(texts) - len(owners))
    return texts, np.array(owners, dtype=np.int64), np.array(caption_index, dtype=np.int64), sources


# --- models -----------------------------------------------------------------------------------

def load_text_encoder(config: dict, model_key: str) -> Callable[[list[str], int], torch.Tensor]:
    """texts, batch_size -> L2-normalised float32 [N, D], for a text_embedder or open_clip model."""
    from ..config import resolve_device, resolve_dtype
    from ..models.loaders import load_model
    from ..models.registry import model_entry

    kind = model_entry(config, model_key)["kind"]
    if kind not in TEXT_KINDS:
        raise ConfigError(f"retrieval: model '{model_key}' has kind {kind}; text retrieval needs one "
                          f"of {', '.join(TEXT_KINDS)}")
    device = resolve_device(config)
    model = load_model(config, model_key, device=device, dtype=resolve_dtype(config, device))
    if kind == "open_clip":
        return lambda texts, batch_size: model.encode_texts(list(texts), batch_size=batch_size)
    return lambda texts, batch_size: model.encode(list(texts), batch_size=batch_size)


def _model_record(config: dict, model_key: str) -> dict:
    entry = config["models"][model_key]
    return {"key": model_key, "kind": entry["kind"], "source": str(entry["source"])}


# --- jobs -------------------------------------------------------------------------------------

def embed_gallery(config: dict, model_key: str, gallery_csv: str, out_npz: str,
                  batch_size: int = ENCODE_BATCH) -> dict:
    """Embed every gallery text once and save them atomically to `out_npz`.

    Arrays: embeddings float32 [C, D], owners int64 [C] (gallery row of each text),
    caption_index int64 [C] (position in the item's captions; -1: the class-name-and-attributes
    text), item_ids [G],
    text_source [G], model_key / model_kind / model_source (scalars). Returns a summary.
    """
    gallery = io.read_table(gallery_csv, what="gallery table")
    if gallery.empty:
        raise InputError(f"retrieval: the gallery table {gallery_csv} has no items")
    texts, owners, caption_index, sources = gallery_texts(gallery)
    encode = load_text_encoder(config, model_key)
    embeddings = encode(texts, batch_size).float().cpu().numpy().astype(np.float32)
    record = _model_record(config, model_key)
    with io.atomic_path(out_npz) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, embeddings=embeddings, owners=owners, caption_index=caption_index,
                 item_ids=gallery["item_id"].to_numpy(dtype=str),
                 text_source=np.array(sources, dtype=str), model_key=np.array(record["key"]),
                 model_kind=np.array(record["kind"]), model_source=np.array(record["source"]))
    summary = {"n_items": len(gallery), "n_texts": len(texts), "dim": int(embeddings.shape[1]),
               "n_fallback": sources.count(CLASS_ATTRIBUTES)}
    log.info("embedded gallery %s with %s: %s", gallery_csv, model_key, summary)
    return summary


def load_gallery_embeddings(path, gallery: pd.DataFrame, config: dict, model_key: str) -> dict:
    """The arrays embed_gallery saved, checked against the gallery table and the model."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    if arrays["item_ids"].tolist() != gallery["item_id"].tolist():
        raise InputError(f"retrieval: {path} was computed for another gallery than the current one "
                         f"({len(arrays['item_ids'])} vs {len(gallery)} items, or a different order); "
                         f"rerun embed_gallery")
    record = _model_record(config, model_key)
    saved = {"key": str(arrays["model_key"]), "kind": str(arrays["model_kind"]),
             "source": str(arrays["model_source"])}
    if saved != record:
        raise InputError(f"retrieval: {path} holds embeddings of model {saved}, not of {record}; "
                         f"rerun embed_gallery with model '{model_key}'")
    return arrays


def retrieve_shard(config: dict, model_key: str | None, params: dict, prompts_csv: str, gallery_csv: str,
                   gallery_npz: str | None, out_dir: str, items_csv: str | None = None,
                   dataset: str | None = None) -> pd.DataFrame:
    """One job: retrieve the best gallery image for every prompt of a shard.

    Writes into out_dir (atomically): `<item_id>_00<ext>`, a byte copy of the retrieved
    gallery image in its original format; params.json; manifest.csv last (MANIFEST_COLUMNS).
    "text" reads the gallery embeddings from gallery_npz and encodes the shard's prompts with
    `model_key`. "attribute" needs `items_csv` (the query items, with attribute_vector) and
    ignores model_key and gallery_npz. `dataset` only names the dataset in error messages.
    """
    strategy = params.get("strategy")
    if strategy not in STRATEGIES:
        raise ConfigError(f"retrieval: unknown strategy {strategy!r}; expected one of {list(STRATEGIES)}")
    gallery = io.read_table(gallery_csv, what="gallery table")
    prompts = io.read_table(prompts_csv, what="prompts table")
    name = dataset or f"of {gallery_csv}"
    if gallery.empty:
        raise InputError(f"retrieval: the gallery table {gallery_csv} (dataset {name}) has no items")
    if strategy == "attribute" and "attribute_vector" not in gallery.columns:
        raise InputError(f"retrieval strategy 'attribute' needs CUB's per-image attribute vectors, but "
                         f"dataset {name} has none (no attribute_vector column in {gallery_csv}); "
                         f"use strategy: text for this dataset")
    _check_disjoint(prompts, gallery, prompts_csv, gallery_csv)

    model = None
    if strategy == "attribute":
        indices, scores = _attribute_for_prompts(prompts, gallery, items_csv, name) if len(prompts) \
            else (np.zeros(0, np.int64), np.zeros(0, np.int64))
        text_source = [ATTRIBUTE_VECTOR] * len(prompts)
    else:
        if model_key is None or gallery_npz is None:
            raise ConfigError("retrieval strategy 'text' needs a model key and the gallery embeddings (.npz)")
        model = {model_key: config["models"][model_key]}
        arrays = load_gallery_embeddings(gallery_npz, gallery, config, model_key)
        indices, scores = np.zeros(0, np.int64), np.zeros(0, np.float32)
        if len(prompts):
            position = {p: i for i, p in enumerate(dict.fromkeys(prompts["prompt"].astype(str)))}
            encoded = load_text_encoder(config, model_key)(list(position), ENCODE_BATCH)
            rows = [position[p] for p in prompts["prompt"].astype(str)]
            indices, scores = text_retrieve(encoded[rows], arrays["embeddings"], arrays["owners"],
                                            n_gallery=len(gallery))
        text_source = [str(arrays["text_source"][i]) for i in indices]

    with io.atomic_dir(out_dir) as tmp:
        records = []
        for row, index, score, source in zip(prompts.itertuples(index=False), indices, scores, text_source):
            hit = gallery.iloc[int(index)]
            image = io.safe_name(f"{io.safe_name(row.item_id)}_00{Path(hit['image']).suffix.lower()}")
            shutil.copyfile(hit["image"], tmp / image)
            records.append({"item_id": row.item_id, "sample": 0, "image": image, "prompt": row.prompt,
                            "seed": -1, "class_name": row.class_name, "source_image": row.image,
                            "retrieved_item_id": hit["item_id"], "retrieval_score": score.item(),
                            "strategy": strategy, "text_source": source})
        manifest = pd.DataFrame(records, columns=MANIFEST_COLUMNS)
        io.write_json(tmp / "params.json", io.provenance(
            method="retrieval", params=params, model=model, dataset=dataset, gallery=str(gallery_csv),
            gallery_embeddings=str(gallery_npz) if strategy == "text" else None,
            n_gallery=len(gallery), n_items=len(prompts), images="byte copies of the gallery files"))
        io.write_csv(tmp / "manifest.csv", manifest)
    return manifest


def _attribute_for_prompts(prompts, gallery, items_csv, name) -> tuple[np.ndarray, np.ndarray]:
    if items_csv is None:
        raise ConfigError("retrieval strategy 'attribute' needs items_csv (the query items with "
                          "their attribute_vector)")
    items = io.read_table(items_csv, what="items table")
    if "attribute_vector" not in items.columns:
        raise InputError(f"retrieval strategy 'attribute': dataset {name} has no attribute vectors "
                         f"(no attribute_vector column in {items_csv}); use strategy: text")
    vectors = items.drop_duplicates("item_id").set_index("item_id")["attribute_vector"]
    missing = sorted(set(prompts["item_id"]) - set(vectors.index))
    if missing:
        raise InputError(f"retrieval: {len(missing)} prompt items are not in {items_csv} "
                         f"(e.g. {missing[:3]})")
    query = attribute_vectors(pd.DataFrame({"item_id": prompts["item_id"],
                                            "attribute_vector": vectors.loc[prompts["item_id"]].to_numpy()}),
                              str(items_csv))
    return attribute_retrieve(query, attribute_vectors(gallery, "gallery"))


def _check_disjoint(prompts: pd.DataFrame, gallery: pd.DataFrame, prompts_csv, gallery_csv) -> None:
    """A query must never retrieve itself: the gallery (train) and queries (test) share nothing."""
    overlap = prompts["item_id"].isin(set(gallery["item_id"])) | prompts["image"].isin(set(gallery["image"]))
    shared = prompts.loc[overlap, "item_id"].tolist()
    if shared:
        raise InputError(f"retrieval: the gallery {gallery_csv} and the queries {prompts_csv} share "
                         f"{len(shared)} items (e.g. {shared[:3]}); the gallery must be the "
                         f"train split and the queries another split")
