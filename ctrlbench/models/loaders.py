"""Load a configured model, tiny stand-in or real, through the same code.

`load_model(config, key)` dispatches on the entry's kind. A tiny model is a folder that
`tiny.build_tiny` wrote in the library's own format, so it goes through exactly the
loader a real model goes through. Nothing is downloaded while `hub_offline` is true
(the default): a real model that is not on disk raises ModelNotFoundError saying how
to get it. A missing model never falls back to a tiny one.
"""

from __future__ import annotations

import io
import json
import os
import pickle  # only for its UnpicklingError: weights are never unpickled with it
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ModelNotFoundError
from .registry import is_tiny, model_entry, model_source
from .vocabulary import DEEPLAB_JSON, NUM_VOC_CLASSES, VOC, read_folder_vocabulary

# --- files and markers shared with tiny.py -----------------------------------------

FID_JSON = "fid_features.json"           # {"arch", "num_features", "image_size"}
FID_WEIGHTS = "fid_features.safetensors"
AESTHETIC_WEIGHTS = "aesthetic_mlp.pth"  # same key names as the LAION .pth
OPEN_CLIP_CONFIG = "open_clip_config.json"
TINY_MARKER = "ctrlbench_tiny.json"      # {"kind", "seed", "note"}: written last by build_tiny

DEFAULT_DEEPLAB_ARCH = "deeplabv3_resnet50"
DEEPLAB_NUM_CLASSES = NUM_VOC_CLASSES  # torchvision's COCO_WITH_VOC_LABELS_V1 weights
INCEPTION_FEATURES = 2048

# Where to get each real model (used in ModelNotFoundError messages).
AESTHETIC_URL = ("https://github.com/christophschuhmann/improved-aesthetic-predictor "
                 "(file sac+logos+ava1-l14-linearMSE.pth)")
INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
# VQGAN+CLIP's VQGAN (taming-transformers vqgan_imagenet_f16_16384) converted to diffusers.
VQGAN_HUB_ID = "xvjiarui/taming-vq-f16-n16384"
_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


# --- architectures the loaders construct --------------------------------------------

class AestheticMLP(nn.Module):
    """LAION improved-aesthetic predictor head on L2-normalised CLIP image embeddings.

    Same layout as sac+logos+ava1-l14-linearMSE.pth (keys layers.0/2/4/6/7): linear
    layers with dropout and no activations. Input [N, d] -> score [N, 1].
    """

    def __init__(self, input_dim: int = 768):
        super().__init__()
        self.input_dim = input_dim
        self.layers = nn.Sequential(
            nn.Linear(input_dim, 1024), nn.Dropout(0.2),
            nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.to(self.layers[0].weight.dtype))


class TinyFidFeatures(nn.Module):
    """Stand-in for Inception pool features: uint8 [N, 3, H, W] -> float [N, num_features].

    Mirrors the real extractor's contract: resize to a fixed size, scale to [-1, 1]. The
    resize follows `use_antialias` exactly as torchmetrics' NoTrainInceptionV3 does: True ->
    torch's antialiased bilinear, False -> torch-fidelity's TF1-like bilinear (no antialias).
    """

    def __init__(self, num_features: int = 64, image_size: int = 32, antialias: bool = True):
        super().__init__()
        # torchmetrics reads `num_features` instead of probing with a 299x299 dummy image.
        self.num_features = num_features
        self.image_size = image_size
        self.use_antialias = antialias  # same attribute name as NoTrainInceptionV3
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, num_features, 3, stride=2, padding=1),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected uint8 images [N, 3, H, W], got {x.dtype} {tuple(x.shape)}")
        return self.net((fid_resize(x.float(), self.image_size, self.use_antialias) - 128) / 128)


def fid_resize(x: torch.Tensor, size: int, antialias: bool) -> torch.Tensor:
    """The resize of torchmetrics' NoTrainInceptionV3 (float [N, 3, H, W] -> [N, 3, size, size])."""
    if antialias:
        return nn.functional.interpolate(x, size=(size, size), mode="bilinear",
                                         align_corners=False, antialias=True)
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    return interpolate_bilinear_2d_like_tensorflow1x(x, size=(size, size), align_corners=False)


@dataclass
class ClipModel:
    """An open_clip model with its preprocessing and tokenizer.

    encode_* return L2-normalised float32 embeddings on the CPU, shape [N, embed_dim].
    """

    model: nn.Module
    preprocess: Callable
    tokenizer: Callable
    embed_dim: int
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    batch_size: int = 32

    @torch.no_grad()
    def encode_images(self, images: list, batch_size: int | None = None) -> torch.Tensor:
        def encode(batch):
            pixels = torch.stack([self.preprocess(im.convert("RGB")) for im in batch])
            return self.model.encode_image(pixels.to(self.device, self.dtype))
        return self._batched(images, encode, batch_size)

    @torch.no_grad()
    def encode_texts(self, texts: list[str], batch_size: int | None = None) -> torch.Tensor:
        def encode(batch):
            return self.model.encode_text(self.tokenizer(list(batch)).to(self.device))
        return self._batched(texts, encode, batch_size)

    def _batched(self, items: list, encode: Callable, batch_size: int | None) -> torch.Tensor:
        size = batch_size or self.batch_size
        chunks = [encode(items[i:i + size]).float().cpu() for i in range(0, len(items), size)]
        if not chunks:
            return torch.zeros(0, self.embed_dim)
        return nn.functional.normalize(torch.cat(chunks), dim=-1)


# --- locating a model ---------------------------------------------------------------

@dataclass
class _Where:
    key: str
    entry: dict
    source: str        # the local path or the hub id / tag
    local: bool        # source is on disk (tiny folder or a local path)
    offline: bool      # config hub_offline

    def missing(self, how: str) -> ModelNotFoundError:
        return ModelNotFoundError(
            f"model '{self.key}' (kind {self.entry['kind']}, source '{self.entry['source']}') "
            f"is not available locally: {how}")


def _looks_like_path(source: str) -> bool:
    return (os.path.isabs(source) or source.startswith((".", "~")) or source.count("/") > 1
            or "\\" in source or source.lower().endswith(_WEIGHT_SUFFIXES))


def _locate(config: dict, key: str) -> _Where:
    entry = model_entry(config, key)
    source = model_source(config, key)
    where = _Where(key, entry, source, local=False, offline=config.get("hub_offline", True))
    if is_tiny(config, key):
        _check_tiny_build(key, entry["kind"], Path(source))
        where.local = True
    elif Path(source).expanduser().exists():
        where.source, where.local = str(Path(source).expanduser()), True
    elif _looks_like_path(source):
        raise where.missing(f"the path {source} does not exist. Point models.{key}.source at "
                            f"the downloaded {_WHAT[entry['kind']]}")
    return where


def _check_tiny_build(key: str, kind: str, folder: Path) -> None:
    rebuild = f"Build it with the tiny_model rule: snakemake {folder}"
    if not folder.is_dir():
        raise ModelNotFoundError(f"tiny model '{key}' (kind {kind}) has not been built: "
                                 f"{folder} does not exist. {rebuild}")
    marker = folder / TINY_MARKER
    if not marker.is_file():
        raise ModelNotFoundError(f"tiny model '{key}': {folder} is not a tiny build (no "
                                 f"{TINY_MARKER}). Delete the folder and rebuild. {rebuild}")
    built = json.loads(marker.read_text())["kind"]
    if built != kind:  # e.g. the config changed the entry's kind after the build
        raise ModelNotFoundError(f"tiny model '{key}' in {folder} was built for kind {built}, "
                                 f"not {kind}. Delete the folder and rebuild. {rebuild}")


_WHAT = {
    "sd": "diffusers Stable Diffusion folder (with model_index.json)",
    "controlnet": "diffusers ControlNet folder (with config.json)",
    "sd_inpaint": "diffusers Stable Diffusion inpainting folder (with model_index.json)",
    "open_clip": "open_clip folder (open_clip_config.json + weights) or checkpoint file",
    "deeplabv3": "torchvision DeepLabV3 weights file (e.g. deeplabv3_resnet50_coco-cd0a2569.pth)",
    "aesthetic": f"LAION aesthetic predictor .pth from {AESTHETIC_URL}",
    "fid_inception": f"torch-fidelity Inception weights from {INCEPTION_URL}",
    "causal_lm": "transformers causal LM folder (config.json, weights, tokenizer)",
    "text_embedder": "sentence-transformers model folder (modules.json)",
    "paradiffusion": "ParaDiffusion weights folder (Llama-2-7b-hf/ scheduler/ sdxl-vae-fp16-fix/ "
                     "text_encoder_lora/ unet/)",
    "vqmodel": f"diffusers VQModel folder (config.json + weights), e.g. the VQGAN+CLIP VQGAN {VQGAN_HUB_ID}",
}


def _hub_cached(repo_id: str, filename: str, revision: str | None = None) -> str | None:
    """The cached file of a Hugging Face repo, or None; never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, revision=revision)
    return found if isinstance(found, str) else None


def _torch_weights(where: _Where, file) -> dict:
    """A .pth / .pt state dict read with torch.load(weights_only=True): tensors and plain
    containers only. A file holding other Python objects (which could run code when
    unpickled) is refused with ModelNotFoundError naming the model and the file."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(error))
        reason = found.group(1) if found else str(error).splitlines()[0]
        raise where.missing(f"{file} is not a plain weights file: torch.load(weights_only=True) refused it "
                            f"({reason.strip()}). It holds Python objects that could run code when loaded, "
                            f"so it is never loaded otherwise; get the original weights file (or a "
                            f".safetensors)") from None


def _single_file(where: _Where, suffixes: tuple[str, ...]) -> Path:
    """The weights file a source names: the path itself, or the one such file in a folder."""
    path = Path(where.source)
    if path.is_file():
        return path
    files = sorted(p for p in path.iterdir() if p.suffix in suffixes) if path.is_dir() else []
    if len(files) != 1:
        raise where.missing(f"expected exactly one {'/'.join(suffixes)} file in {path}, "
                            f"found {[p.name for p in files] or 'none'}")
    return files[0]


# --- diffusers ----------------------------------------------------------------------

def _diffusers_source(where: _Where, index_file: str) -> str:
    """Check that a diffusers folder or cached hub repo exists before from_pretrained,
    so a missing model gives our message rather than a stack of hub errors."""
    if where.local:
        if not (Path(where.source) / index_file).is_file():
            raise where.missing(f"{where.source} has no {index_file}; it is not a "
                                f"{_WHAT[where.entry['kind']]}")
        return where.source
    cached = _hub_cached(where.source, index_file, where.entry.get("revision"))
    if cached is None and where.offline:
        raise where.missing(
            f"it is not a local folder and the Hugging Face repo is not in the local cache "
            f"(hub_offline: true). Get it with `hf download {where.source} --local-dir <dir>` "
            f"then set models.{where.key}.source to <dir>, or set hub_offline: false to let "
            f"it download")
    return where.source


def _from_pretrained(cls, where: _Where, index_file: str, dtype, **kwargs):
    source = _diffusers_source(where, index_file)
    if where.entry.get("revision"):
        kwargs["revision"] = where.entry["revision"]
    try:
        return cls.from_pretrained(source, dtype=dtype, local_files_only=where.offline, **kwargs)
    except OSError as exc:  # diffusers' "no file named ..." for an incomplete folder/cache
        raise where.missing(f"{source} is incomplete: {exc}") from exc


def _load_pipeline(cls, where: _Where, device: str, dtype):
    # No safety checker: it blacks out flagged images, which would corrupt image metrics.
    pipe = _from_pretrained(cls, where, "model_index.json", dtype,
                            safety_checker=None, requires_safety_checker=False)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load_sd(where, device, dtype):
    from diffusers import StableDiffusionPipeline

    return _load_pipeline(StableDiffusionPipeline, where, device, dtype)


def _load_sd_inpaint(where, device, dtype):
    from diffusers import StableDiffusionInpaintPipeline

    return _load_pipeline(StableDiffusionInpaintPipeline, where, device, dtype)


def _load_diffusers_model(cls_name: str):
    def load(where, device, dtype):
        import diffusers

        model = _from_pretrained(getattr(diffusers, cls_name), where, "config.json", dtype)
        return model.to(device).eval().requires_grad_(False)
    return load


_load_controlnet = _load_diffusers_model("ControlNetModel")
_load_vqmodel = _load_diffusers_model("VQModel")  # TCIG's stage-1 decoder (the VQGAN)


# --- open_clip ----------------------------------------------------------------------

_PRECISION = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _open_clip_args(where: _Where) -> tuple[str, dict]:
    """model_name and keyword arguments for open_clip.create_model_and_transforms."""
    if where.local and Path(where.source).is_dir():
        # A folder in open_clip's hub format (tiny builds, `hf download` of an open_clip repo).
        if not (Path(where.source) / OPEN_CLIP_CONFIG).is_file():
            raise where.missing(f"{where.source} has no {OPEN_CLIP_CONFIG}")
        return f"local-dir:{where.source}", {}
    arch = where.entry.get("arch")
    if not arch:
        raise where.missing(f"models.{where.key}.arch must name the open_clip architecture "
                            f"(e.g. ViT-L-14) for a checkpoint file or pretrained tag")
    if where.local:
        return arch, {"pretrained": where.source}
    return arch, _open_clip_tag_args(where, arch)


def _open_clip_tag_args(where: _Where, arch: str) -> dict:
    """Resolve a pretrained tag (e.g. "openai") to a cached checkpoint without a download.

    The tag's QuickGELU flag and image normalisation are applied explicitly, as open_clip
    itself only warns when e.g. ViT-L-14 + openai mismatch on QuickGELU.
    """
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch, where.source)
    if not cfg:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise where.missing(f"'{where.source}' is neither a local path nor an open_clip "
                            f"pretrained tag of {arch} (tags: {known})")
    repo, filename = os.path.split(cfg.get("hf_hub", ""))
    candidates = [filename] if filename else ["open_clip_model.safetensors",
                                              "open_clip_pytorch_model.bin"]
    cached = next((p for f in candidates if repo and (p := _hub_cached(repo, f))), None)
    if cached is None and where.offline:
        fetch = (f"`hf download {repo} {candidates[0]}` (fills the Hugging Face cache, "
                 f"which this loader reads offline)" if repo else f"downloading {cfg.get('url')}"
                 f" and setting models.{where.key}.source to the file")
        raise where.missing(f"the {arch} '{where.source}' weights are not cached "
                            f"(hub_offline: true). Get them with {fetch}, or set "
                            f"hub_offline: false to let open_clip download them")
    args = {"pretrained": cached or where.source,
            "force_quick_gelu": bool(cfg.get("quick_gelu", False))}
    if cached:
        args.update(image_mean=cfg.get("mean"), image_std=cfg.get("std"),
                    image_interpolation=cfg.get("interpolation"),
                    image_resize_mode=cfg.get("resize_mode"))
    return args


def _load_open_clip(where, device, dtype) -> ClipModel:
    import open_clip

    name, kwargs = _open_clip_args(where)
    model, _, preprocess = open_clip.create_model_and_transforms(
        name, precision=_PRECISION[dtype], device=device, **kwargs)
    model.eval().requires_grad_(False)
    embed_dim = int(model.text_projection.shape[-1]) if hasattr(model, "text_projection") \
        else int(model.visual.output_dim)
    return ClipModel(model, preprocess, open_clip.get_tokenizer(name), embed_dim, device, dtype)


# --- torchvision DeepLabV3 ------------------------------------------------------------

def build_deeplab(builder: str, num_classes: int) -> nn.Module:
    """A torchvision segmentation builder by name, or "toy_fcn" (the toy world's segmenter)."""
    if builder == "toy_fcn":
        from .toy_fcn import ToyFCN

        return ToyFCN(num_classes)
    from torchvision import models

    return models.get_model(builder, weights=None, weights_backbone=None,
                            num_classes=num_classes, aux_loss=False)


def _load_deeplab(where, device, dtype):
    """The segmenter, with `class_names`: its output channels' classes (models/vocabulary.py)."""
    from safetensors.torch import load_file

    path = Path(where.source)
    if path.is_dir():  # library format: model.safetensors + a json naming the builder (and classes)
        vocabulary = read_folder_vocabulary(path, where.key)
        spec = json.loads((path / DEEPLAB_JSON).read_text())
        model = build_deeplab(spec["builder"], spec["num_classes"])
        state = load_file(path / "model.safetensors")
    else:
        vocabulary = VOC
        builder = where.entry.get("arch", DEFAULT_DEEPLAB_ARCH)
        model = build_deeplab(builder, DEEPLAB_NUM_CLASSES)
        file = path if where.local else _torchvision_weights_file(where, builder)
        state = load_file(file) if file.suffix == ".safetensors" else _torch_weights(where, file)
        # The released weights include the auxiliary head; we build without it.
        state = {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}
    model.load_state_dict(state)
    model.class_names = vocabulary.names
    return model.to(device, dtype).eval().requires_grad_(False)


def _torchvision_weights_file(where: _Where, builder: str) -> Path:
    """A torchvision weights tag (e.g. COCO_WITH_VOC_LABELS_V1) -> its file in the torch
    hub cache, downloaded only when hub_offline is false."""
    from torchvision import models

    try:
        weights = models.get_model_weights(builder)[where.source.split(".")[-1]]
    except (KeyError, ValueError) as exc:
        raise where.missing(f"'{where.source}' is neither a local path nor a weights tag "
                            f"of torchvision's {builder}") from exc
    file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if not file.is_file():
        if where.offline:
            raise where.missing(f"{file} does not exist (hub_offline: true). Download "
                                f"{weights.url} there or anywhere and set models.{where.key}"
                                f".source to the file, or set hub_offline: false")
        file.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(weights.url, str(file))
    return file


# --- aesthetic predictor and FID features ---------------------------------------------

def _need_local(where: _Where) -> None:
    if not where.local:  # these weights live on GitHub, not on a hub this code can read
        raise where.missing(f"download the {_WHAT[where.entry['kind']]} and set "
                            f"models.{where.key}.source to the file")


def _load_aesthetic(where, device, dtype):
    _need_local(where)
    state = _torch_weights(where, _single_file(where, (".pth", ".pt")))
    model = AestheticMLP(input_dim=state["layers.0.weight"].shape[1])
    model.load_state_dict(state)
    # float32 always: the head is tiny and its inputs are float32 CLIP embeddings.
    return model.to(device).eval().requires_grad_(False)


def _load_fid(where, device, dtype):
    """Tiny or real FID features, both with `num_features`, `use_antialias` (torchmetrics'
    default True; `load_fid_extractor` sets it explicitly) and `feature_extractor` (a label)."""
    _need_local(where)
    path = Path(where.source)
    if path.is_dir():
        from safetensors.torch import load_file

        spec = json.loads((path / FID_JSON).read_text())
        model = TinyFidFeatures(spec["num_features"], spec["image_size"])
        model.load_state_dict(load_file(path / FID_WEIGHTS))
        model.feature_extractor = f"{spec['arch']} ({spec['num_features']})"
    else:
        model = _inception(where, path)
        model.feature_extractor = f"inception-v3-compat pool3 ({INCEPTION_FEATURES}) [{path.name}]"
    # float32 always: FID statistics are sensitive to feature precision.
    return model.to(device).eval().requires_grad_(False)


def _inception(where: _Where, path: Path) -> nn.Module:
    """torchmetrics' NoTrainInceptionV3 (torch-fidelity "inception-v3-compat", pool3)."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    # torch-fidelity unpickles the weights path with weights_only=False; hand it a buffer
    # re-serialised from a weights_only load instead, so only tensors are ever unpickled.
    state = _torch_weights(where, path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    model = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(INCEPTION_FEATURES)],
                               feature_extractor_weights_path=buffer)
    model.num_features = INCEPTION_FEATURES  # spares torchmetrics a dummy forward
    return model


class ClipFidFeatures(nn.Module):
    """An open_clip image tower as FID/KID features: uint8 images [N, 3, H, W] -> the
    L2-normalised image embeddings [N, embed_dim] (ClipModel.encode_images, its own
    preprocessing). The Frechet distance of these is "FD of CLIP features", not Inception
    FID; with the toy CLIP it is the toy world's "toy FID" (docs/toyworld.md)."""

    def __init__(self, clip: ClipModel, label: str):
        super().__init__()
        self.clip = clip
        self.tower = clip.model  # registered as a submodule: its parameters tell callers the device
        self.num_features = clip.embed_dim
        self.feature_extractor = label
        self.use_antialias = True  # unused: open_clip's preprocessing does its own resize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        images = [Image.fromarray(image.permute(1, 2, 0).cpu().numpy().astype("uint8")) for image in x]
        return self.clip.encode_images(images)


def load_fid_extractor(config: dict, key: str, device: str = "cpu", *, antialias: bool) -> nn.Module:
    """models.<key> (kind fid_inception, or open_clip for FD of CLIP image embeddings) with
    the resize to its input size chosen explicitly.

    antialias=True: torch's antialiased bilinear resize (torchmetrics >= 1.8's default).
    antialias=False: torch-fidelity's TF1-like bilinear resize, as the original TF FID.
    The model's `use_antialias` holds the choice, `feature_extractor` a label for results.
    An open_clip model resizes with its own preprocessing whatever `antialias` says.
    """
    from ..errors import ConfigError

    entry = model_entry(config, key)
    if entry["kind"] == "open_clip":
        clip = load_model(config, key, device)
        return ClipFidFeatures(clip, f"open_clip image embeddings ({clip.embed_dim}) [{entry['source']}]; "
                                     f"FD of CLIP features, not Inception FID")
    if entry["kind"] != "fid_inception":
        raise ConfigError(f"models.{key} is kind {entry['kind']}, not fid_inception or open_clip")
    model = load_model(config, key, device)
    model.use_antialias = bool(antialias)
    return model


def _load_causal_lm(where, device, dtype):
    from .llm import load_causal_lm  # transformers causal LM for local LLM prompts

    return load_causal_lm(where, device, dtype)


def _load_text_embedder(where, device, dtype):
    from .text_embedder import load_text_embedder  # sentence-transformers for retrieval

    return load_text_embedder(where, device, dtype)


def _load_paradiffusion(where, device, dtype):
    from .paradiffusion import locate_weights  # checks the folder; the parts load in the job

    if not where.local:
        raise where.missing(f"set models.{where.key}.source to the local {_WHAT['paradiffusion']}; "
                            f"see docs/methods/paradiffusion.md for where to get each part")
    return locate_weights(where.source, where.key)


_LOADERS: dict[str, Callable[[_Where, str, Any], Any]] = {
    "sd": _load_sd,
    "controlnet": _load_controlnet,
    "sd_inpaint": _load_sd_inpaint,
    "open_clip": _load_open_clip,
    "deeplabv3": _load_deeplab,
    "aesthetic": _load_aesthetic,
    "fid_inception": _load_fid,
    "causal_lm": _load_causal_lm,
    "text_embedder": _load_text_embedder,
    "paradiffusion": _load_paradiffusion,
    "vqmodel": _load_vqmodel,
}


def load_model(config: dict, key: str, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """Load models.<key> of `config` on `device`.

    Returns: sd -> StableDiffusionPipeline, sd_inpaint -> StableDiffusionInpaintPipeline,
    controlnet -> ControlNetModel, open_clip -> ClipModel, deeplabv3 -> nn.Module
    ({"out": [N, C, H, W]}, with `class_names`: C names, background first; VOC's 21 for
    torchvision weights), aesthetic -> AestheticMLP, fid_inception -> nn.Module usable
    as torchmetrics' `feature=`, paradiffusion -> ParaDiffusionWeights (a checked folder whose
    parts ctrlbench.models.paradiffusion loads), vqmodel -> diffusers VQModel (frozen). Raises
    ModelNotFoundError when the model is not on disk (and may not be downloaded).
    """
    where = _locate(config, key)
    return _LOADERS[where.entry["kind"]](where, device, dtype)
