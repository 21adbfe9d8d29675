"""TCIG: two-stage controlled text-to-image generation (docs/methods/tcig.md).

Stage 1 optimises the latent z of a pretrained image decoder so that the decoded image
matches the prompt (CLIP spherical distance on random cutouts, as in VQGAN+CLIP) and,
for each target class c, the segmenter's probability of c matches the target mask (c
is a channel of the segmenter's vocabulary: VOC for DeepLabV3, a folder's own classes):

    L(z) = clip_weight * L_clip(decode(z), prompt) + sum_c seg_weight_c * MSE(p_c(decode(z)), mask_c)

Stage 2 runs Stable Diffusion img2img on the stage-1 image at a moderate strength, to
add detail while keeping its layout.

Decoders: "sd_vae" (the SD pipeline's own VAE; latent [1, 4, H/8, W/8]) or "vqmodel" (a
diffusers VQModel, the VQGAN of VQGAN+CLIP converted to diffusers, given as a model of kind
vqmodel; latent in codebook space, quantised with a straight-through estimator, as
VQGAN+CLIP does). CLIP sees `cutouts` cutouts per step, made and augmented as VQGAN+CLIP
generate.py's --cut_method does (make_cutouts).

Every image is made on its own (one item and sample per call), so there is no batch to
halve on CUDA out-of-memory. A stage-1 or stage-2 image holding NaN or inf raises
FloatingPointError naming the item and sample; it is never saved.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.nn import functional as F

from .. import io
from ..batching import check_finite_images, finite_pil
from ..config import resolve_device, resolve_dtype
from ..models.loaders import load_model
from ..models.vocabulary import ClassVocabulary, segmenter_vocabulary
from ..prompts.long_prompt import TEXT_HANDLING
# read_inputs, item_masks and MASK_DIR are re-exported: TCIG's inputs are the shared region inputs.
from .regions import MASK_DIR, check_all_masks, item_masks, read_inputs, resize_mask, save_item_masks  # noqa: F401
from .registry import TCIG_CUT_METHODS, TCIG_DECODERS, TCIG_DEFAULTS, TCIG_OPTIMIZERS  # noqa: F401
from .segmentation import VOC, check_segmenter_classes, model_vocabulary, segment_probs

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["item_id", "sample", "image", "prompt", "seed", "class_name", "source_image",
                    "stage1_image", "stage1_final_loss", "masks"]
STAGE1_DIR = "stage1"
DECODERS = TCIG_DECODERS
# OpenAI CLIP normalisation, used when the CLIP model does not say its own.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# --- decoders ---------------------------------------------------------------------------

class _ClampWithGrad(torch.autograd.Function):
    """clamp() whose gradient still flows where it points back into the range
    (VQGAN+CLIP's ClampWithGrad), so saturated pixels can recover."""

    @staticmethod
    def forward(ctx, x, low, high):
        ctx.low, ctx.high = low, high
        ctx.save_for_backward(x)
        return x.clamp(low, high)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (grad * (x - x.clamp(ctx.low, ctx.high)) >= 0), None, None


def clamp_with_grad(x: torch.Tensor, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    return _ClampWithGrad.apply(x, low, high)


class SDVAEDecoder:
    """The SD VAE decoder on latents in SD's scaled latent space (z * scaling_factor),
    initialised N(0, 1) like SD's own initial noise. Output [1, 3, H, W] in [0, 1]."""

    name = "sd_vae"

    def __init__(self, vae):
        self.model = vae.eval().requires_grad_(False)  # only z is optimised
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling = float(vae.config.scaling_factor)
        self.shift = float(getattr(vae.config, "shift_factor", None) or 0.0)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        _check_divisible(self.name, height, width, self.factor)
        return (1, self.model.config.latent_channels, height // self.factor, width // self.factor)

    def init_latent(self, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(self.latent_shape(height, width), generator=generator)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        x = self.model.decode((z / self.scaling + self.shift).to(self.device, self.dtype)).sample
        return clamp_with_grad((x.float() + 1) / 2)

    def project_(self, z: torch.Tensor) -> None:
        """Keep z in the decoder's domain after a step (nothing to do for a VAE)."""


class VQModelDecoder:
    """A diffusers VQModel decoder on latents in codebook space: decode quantises to the
    nearest codebook vector (straight-through gradient), as VQGAN+CLIP's synth() does.
    z starts as random codebook vectors and is clamped to the codebook's per-channel range
    after every step."""

    name = "vqmodel"

    def __init__(self, vqmodel):
        self.model = vqmodel.eval().requires_grad_(False)
        self.factor = 2 ** (len(vqmodel.config.block_out_channels) - 1)
        codebook = vqmodel.quantize.embedding.weight.detach().float()
        self.codebook = codebook.cpu()
        self.z_min = codebook.min(dim=0).values.view(1, -1, 1, 1)
        self.z_max = codebook.max(dim=0).values.view(1, -1, 1, 1)

    device = SDVAEDecoder.device
    dtype = SDVAEDecoder.dtype

    def latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        _check_divisible(self.name, height, width, self.factor)
        return (1, self.codebook.shape[1], height // self.factor, width // self.factor)

    def init_latent(self, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        _, channels, h, w = self.latent_shape(height, width)
        codes = torch.randint(0, self.codebook.shape[0], (h * w,), generator=generator)
        return self.codebook[codes].T.reshape(1, channels, h, w).contiguous()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        x = self.model.decode(z.to(self.device, self.dtype)).sample
        return clamp_with_grad((x.float() + 1) / 2)

    def project_(self, z: torch.Tensor) -> None:
        z.copy_(torch.maximum(torch.minimum(z, self.z_max.to(z.device)), self.z_min.to(z.device)))


def _check_divisible(name: str, height: int, width: int, factor: int) -> None:
    if height % factor or width % factor or height <= 0 or width <= 0:
        raise ValueError(f"decoder {name}: height and width must be positive multiples of {factor}, "
                         f"got {height}x{width}")


def as_decoder(model):
    """A decoder wrapper (returned as is), an AutoencoderKL or a VQModel -> decoder wrapper."""
    if isinstance(model, (SDVAEDecoder, VQModelDecoder)):
        return model
    from diffusers import AutoencoderKL, VQModel

    if isinstance(model, VQModel):
        return VQModelDecoder(model)
    if isinstance(model, AutoencoderKL):
        return SDVAEDecoder(model)
    raise TypeError(f"no TCIG decoder for {type(model).__name__}; expected AutoencoderKL or VQModel")


def build_decoder(params: dict, sd_pipe=None, vqmodel=None):
    """The stage-1 decoder that params["decoder"] names: "sd_vae" -> sd_pipe.vae,
    "vqmodel" -> `vqmodel` (a loaded diffusers VQModel, models kind vqmodel)."""
    kind = params.get("decoder", "sd_vae")
    if kind == "sd_vae":
        if sd_pipe is None:
            raise ValueError("decoder sd_vae needs the SD pipeline")
        return SDVAEDecoder(sd_pipe.vae)
    if kind == "vqmodel":
        if vqmodel is None:
            raise ValueError("decoder vqmodel needs a VQModel: name a model of kind vqmodel in the method's "
                             "`vqmodel` setting (docs/models.md)")
        return VQModelDecoder(vqmodel)
    raise ValueError(f"unknown TCIG decoder '{kind}' (decoders: {', '.join(DECODERS)})")


# --- stage 1 ------------------------------------------------------------------------------

def clip_input(clip) -> tuple[tuple[int, int], tuple, tuple]:
    """((height, width), mean, std) of a ClipModel's image input."""
    visual = clip.model.visual
    size = getattr(visual, "image_size", None)
    mean, std = getattr(visual, "image_mean", None), getattr(visual, "image_std", None)
    for t in getattr(clip.preprocess, "transforms", []):
        if mean is None and type(t).__name__ == "Normalize":
            mean, std = t.mean, t.std
        if size is None and type(t).__name__ == "CenterCrop":
            size = t.size
    if size is None:
        raise ValueError("cannot tell the CLIP model's input size")
    size = (size, size) if isinstance(size, int) else tuple(size)
    return (int(size[0]), int(size[-1])), tuple(mean or CLIP_MEAN), tuple(std or CLIP_STD)


# generate.py's default augments (-aug Af Pe Ji Er: kornia RandomAffine, RandomPerspective,
# ColorJitter, RandomErasing, each applied with p 0.7) and its noise (noise_fac 0.1). Its two
# cut methods with augments differ only in the rotation range and the perspective distortion.
CUT_AUGMENTS = {"nrupdated": {"degrees": 30.0, "distortion": 0.5},   # MakeCutoutsNRUpdate
                "latest": {"degrees": 15.0, "distortion": 0.7}}       # MakeCutouts (its default)
AUGMENT_P = 0.7
NOISE_FAC = 0.1


def make_cutouts(image: torch.Tensor, cut_size: tuple[int, int], cutn: int, cut_pow: float,
                 generator: torch.Generator, method: str = "original") -> torch.Tensor:
    """VQGAN+CLIP generate.py's cutouts of [1, 3, H, W] -> [cutn, 3, *cut_size], by its
    --cut_method:

    * original (MakeCutoutsOrig): `cutn` random square crops, side rand() ** cut_pow *
      (max - min) + min with max = min(H, W), min = min(H, W, cut size), each resized to
      cut_size (bilinear, antialiased when shrinking);
    * nrupdated (MakeCutoutsNRUpdate): the same crops, then augment_cutouts (rotation up to
      30 degrees, perspective distortion 0.5);
    * latest (MakeCutouts, generate.py's default): `cutn` copies of the whole image pooled to
      cut_size ((adaptive average + adaptive max) / 2; cut_pow unused), then augment_cutouts
      (rotation up to 15 degrees, perspective distortion 0.7).

    Every random draw comes from `generator`."""
    if method not in TCIG_CUT_METHODS:
        raise ValueError(f"unknown cut method '{method}' (cut methods: {', '.join(TCIG_CUT_METHODS)})")
    if method == "latest":
        pooled = (F.adaptive_avg_pool2d(image, cut_size) + F.adaptive_max_pool2d(image, cut_size)) / 2
        cuts = pooled.expand(cutn, -1, -1, -1)
    else:
        cuts = _random_crops(image, cut_size, cutn, cut_pow, generator)
    if method == "original":
        return cuts
    return augment_cutouts(cuts, generator, **CUT_AUGMENTS[method])


def _random_crops(image, cut_size, cutn, cut_pow, generator) -> torch.Tensor:
    _, _, height, width = image.shape
    max_size = min(height, width)
    min_size = min(height, width, *cut_size)
    cuts = []
    for _ in range(cutn):
        size = int(torch.rand((), generator=generator) ** cut_pow * (max_size - min_size) + min_size)
        x = int(torch.randint(0, width - size + 1, (), generator=generator))
        y = int(torch.randint(0, height - size + 1, (), generator=generator))
        cut = image[:, :, y:y + size, x:x + size]
        cuts.append(F.interpolate(cut, size=cut_size, mode="bilinear", align_corners=False,
                                  antialias=size > min(cut_size)))
    return torch.cat(cuts)


def augment_cutouts(cuts: torch.Tensor, generator: torch.Generator, degrees: float,
                    distortion: float) -> torch.Tensor:
    """generate.py's augments of a cutout batch [N, 3, h, w], in its order, each on a cutout
    with probability AUGMENT_P (torchvision functional ops: differentiable, zero fill):

    1. affine: rotation U(-degrees, degrees), shift U(-0.1, 0.1) of the size, x shear U(-5, 5);
    2. perspective: each corner moved inwards by U(0, distortion * half the size) per axis;
    3. colour: brightness, contrast, saturation x U(0.9, 1.1), hue + U(-0.1, 0.1), random order;
    4. erasing: one rectangle (10-40% of the area, aspect 0.3-3.3) zeroed in every cutout, or
       in none (kornia's same_on_batch);
    5. noise: + U(0, NOISE_FAC) (one factor per cutout) x standard normal noise, no clamp.

    Every parameter is drawn from `generator` whether or not its augment applies, so the
    number of draws is fixed."""
    cuts = _random_affine(cuts, generator, degrees)
    cuts = _random_perspective(cuts, generator, distortion)
    cuts = _color_jitter(cuts, generator)
    cuts = _random_erasing(cuts, generator)
    facs = torch.rand(len(cuts), 1, 1, 1, generator=generator) * NOISE_FAC
    noise = facs * torch.randn(cuts.shape, generator=generator)
    return cuts + noise.to(cuts.device, cuts.dtype)


def _uniform(generator, low, high, *shape):
    return (torch.rand(shape, generator=generator) * (high - low) + low).tolist()


def _per_cutout(cuts, generator, transform) -> torch.Tensor:
    """transform(cutout, i) on the cutouts drawn with probability AUGMENT_P."""
    applies = (torch.rand(len(cuts), generator=generator) < AUGMENT_P).tolist()
    return torch.stack([transform(cut, i) if on else cut for i, (cut, on) in enumerate(zip(cuts, applies))])


def _random_affine(cuts, generator, degrees):
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    n, _, height, width = cuts.shape
    angles, shears = _uniform(generator, -degrees, degrees, n), _uniform(generator, -5.0, 5.0, n)
    shifts = list(zip(_uniform(generator, -0.1 * width, 0.1 * width, n),
                      _uniform(generator, -0.1 * height, 0.1 * height, n)))
    return _per_cutout(cuts, generator, lambda cut, i: TF.affine(
        cut, angle=angles[i], translate=list(shifts[i]), scale=1.0, shear=[shears[i], 0.0],
        interpolation=InterpolationMode.BILINEAR, fill=0.0))


def _random_perspective(cuts, generator, distortion):
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    n, _, height, width = cuts.shape
    corners = [[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]]
    inward = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
    reach = torch.tensor([distortion * width / 2, distortion * height / 2])
    ends = (torch.tensor(corners) + inward * reach * torch.rand(n, 4, 2, generator=generator)).tolist()
    return _per_cutout(cuts, generator, lambda cut, i: TF.perspective(
        cut, corners, ends[i], interpolation=InterpolationMode.BILINEAR, fill=0.0))


def _color_jitter(cuts, generator):
    from torchvision.transforms import functional as TF

    n = len(cuts)
    jitters = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    values = [[*factors, hue] for factors, hue in zip(_uniform(generator, 0.9, 1.1, n, 3),
                                                       _uniform(generator, -0.1, 0.1, n))]
    orders = [torch.randperm(len(jitters), generator=generator).tolist() for _ in range(n)]

    def jitter(cut, i):
        for k in orders[i]:
            cut = jitters[k](cut, values[i][k])
        return cut
    return _per_cutout(cuts, generator, jitter)


def _random_erasing(cuts, generator):
    """One rectangle, zeroed in every cutout (with probability AUGMENT_P) or in none."""
    _, _, height, width = cuts.shape
    area, ratio = _uniform(generator, 0.1, 0.4) * height * width, _uniform(generator, 0.3, 1 / 0.3)
    box_h = min(height, max(1, round((area * ratio) ** 0.5)))
    box_w = min(width, max(1, round((area / ratio) ** 0.5)))
    top = int(torch.randint(0, height - box_h + 1, (), generator=generator))
    left = int(torch.randint(0, width - box_w + 1, (), generator=generator))
    if torch.rand((), generator=generator) >= AUGMENT_P:
        return cuts
    keep = torch.ones(1, 1, height, width, device=cuts.device, dtype=cuts.dtype)
    keep[..., top:top + box_h, left:left + box_w] = 0
    return cuts * keep


def spherical_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """2 * arcsin(|a - b| / 2) ** 2 of L2-normalised embeddings (VQGAN+CLIP's Prompt loss),
    a [N, D] against b [1, D] -> [N]."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    return (a - b).norm(dim=-1).div(2).clamp(max=1).arcsin().pow(2).mul(2)


OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def _choice(params: dict, key: str, choices: tuple[str, ...]) -> str:
    if params[key] not in choices:
        raise ValueError(f"{key} must be one of {', '.join(choices)}, got {params[key]!r}")
    return params[key]


def seg_weights(seg_weight, classes: list[int], vocabulary: ClassVocabulary = VOC) -> list[float]:
    """Weight of each target class (channels of `vocabulary`): one number for all, or a dict
    keyed by class name or index in the segmenter's vocabulary (VOC: VOC or COCO names), with
    an optional "default" (1.0 when absent) for classes not listed."""
    if not isinstance(seg_weight, dict):
        return [float(seg_weight)] * len(classes)
    by_class, default = {}, 1.0
    for key, value in seg_weight.items():
        if key == "default":
            default = float(value)
        else:
            by_class[vocabulary.index(key)] = float(value)
    return [by_class.get(c, default) for c in classes]


def _targets(target_masks: dict, height: int, width: int, device,
             vocabulary: ClassVocabulary) -> tuple[list[int], torch.Tensor]:
    classes, masks = [], []
    for key, mask in target_masks.items():
        try:
            index = vocabulary.index(key)
        except KeyError as error:
            raise ValueError(f"target class {key!r} is not a class of the segmenter: {error.args[0]}") from None
        if index == 0:
            raise ValueError(f"target class {key!r} is the background, not a {vocabulary.name} object class")
        if index in classes:
            raise ValueError(f"target class {vocabulary.names[index]} is given twice")
        if np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask).shape != (height, width):
            log.warning("target mask of class %s is %s, resized (nearest) to %dx%d",
                        vocabulary.names[index], tuple(np.shape(mask)), height, width)
        classes.append(index)
        masks.append(torch.from_numpy(resize_mask(mask, height, width)).float())
    stacked = torch.stack(masks) if masks else torch.zeros(0, height, width)
    return classes, stacked.to(device)


def stage1(decoder, clip, deeplab, prompt: str, target_masks: dict, params: dict,
           seed: int, label: str | None = None) -> tuple[Image.Image, list[dict]]:
    """Optimise the decoder latent for `prompt` and `target_masks` ({class name or index in
    the segmenter's vocabulary (segmentation.model_vocabulary; VOC: VOC or COCO names): bool
    mask [H, W]}, resized to the image size if needed); returns the image decoded from the
    final latent and the loss history.

    params: height, width, iterations, optimizer (adam | adamw), lr, cutouts, cut_pow,
    cut_method (make_cutouts), clip_weight, seg_weight. The latent's initial value and
    every cutout and augmentation come from torch.Generator("cpu").manual_seed(seed). The
    history has iterations + 1 entries: entry i is the loss of the latent after i optimiser
    steps (the last one is the returned image's) with keys
    step, loss (the total), clip (unweighted), seg (the weighted sum of the mask terms)
    and seg_<class> (each class's unweighted MSE, by the vocabulary's own name). A decoded
    image holding NaN or inf raises FloatingPointError naming it by `label` (default
    "image (seed <seed>)")."""
    decoder = as_decoder(decoder)
    height, width = int(params["height"]), int(params["width"])
    device = decoder.device
    generator = torch.Generator("cpu").manual_seed(int(seed))
    z = decoder.init_latent(height, width, generator).float().to(device).requires_grad_(True)
    optimizer = OPTIMIZERS[_choice(params, "optimizer", TCIG_OPTIMIZERS)]([z], lr=float(params["lr"]))
    cut_method = _choice(params, "cut_method", TCIG_CUT_METHODS)

    text = clip.encode_texts([prompt]).to(device)  # [1, D], L2-normalised
    cut_size, mean, std = clip_input(clip)
    mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=device).view(1, 3, 1, 1)
    clip_dtype = next(clip.model.parameters()).dtype
    vocabulary = model_vocabulary(deeplab)
    classes, masks = _targets(target_masks, height, width, device, vocabulary)
    weights = torch.tensor(seg_weights(params["seg_weight"], classes, vocabulary), device=device)
    clip_weight = float(params["clip_weight"])
    names = [vocabulary.names[c] for c in classes]

    def losses(image):
        cuts = make_cutouts(image, cut_size, int(params["cutouts"]), float(params["cut_pow"]), generator, cut_method)
        embeds = clip.model.encode_image(((cuts - mean) / std).to(clip_dtype)).float()
        clip_loss = spherical_distance(embeds, text).mean()
        loss = clip_weight * clip_loss
        mse = torch.zeros(0, device=device)
        if classes:
            probs = segment_probs(deeplab, image)[0, classes]          # [K, H, W]
            mse = (probs - masks).pow(2).mean(dim=(1, 2))               # [K]
            seg = (weights * mse).sum()
            loss = loss + seg
        else:
            seg = torch.zeros((), device=device)
        return loss, clip_loss, seg, mse

    history = []
    iterations = int(params["iterations"])
    for step in range(iterations + 1):
        final = step == iterations
        with torch.set_grad_enabled(not final):
            image = decoder.decode(z)
            loss, clip_loss, seg, mse = losses(image)
        entry = {"step": step, "loss": loss.item(), "clip": clip_loss.item(), "seg": seg.item()}
        entry.update({f"seg_{name}": v for name, v in zip(names, mse.tolist())})
        history.append(entry)
        if final:
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            decoder.project_(z)
        if (step + 1) % 50 == 0:
            log.debug("stage 1 step %d/%d: loss %.4f", step + 1, iterations, entry["loss"])
    check_finite_images(image, [label or f"image (seed {seed})"], "tcig stage 1")
    return to_pil(image), history


def to_pil(image: torch.Tensor) -> Image.Image:
    """[1, 3, H, W] in [0, 1] -> RGB PIL image."""
    array = (image[0].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round()
    return Image.fromarray(array.astype(np.uint8))


# --- stage 2 ------------------------------------------------------------------------------

def build_img2img(pipe):
    """A StableDiffusionImg2ImgPipeline sharing the modules of an SD pipeline (no copy) and
    its scheduler; an img2img pipeline is returned as is."""
    from diffusers import StableDiffusionImg2ImgPipeline

    if isinstance(pipe, StableDiffusionImg2ImgPipeline):
        return pipe
    components = {k: v for k, v in pipe.components.items() if k in (
        "vae", "text_encoder", "tokenizer", "unet", "scheduler", "feature_extractor", "image_encoder")}
    img2img = StableDiffusionImg2ImgPipeline(**components, safety_checker=None, requires_safety_checker=False)
    img2img.set_progress_bar_config(disable=True)
    return img2img


@torch.inference_mode()
def stage2(pipe, image: Image.Image, prompt: str, strength: float, params: dict, seed: int,
           label: str | None = None) -> Image.Image:
    """SD img2img of the stage-1 image: `strength` of the `num_inference_steps` schedule
    is re-noised and denoised (guidance_scale, negative_prompt from params), noise from
    torch.Generator("cpu").manual_seed(seed). Prompts are encoded in 77-token chunks
    (never truncated). strength 0 returns a copy of `image`. Keeps the image size
    (a multiple of 8). An output holding NaN or inf raises FloatingPointError naming it
    by `label` (default "image (seed <seed>)")."""
    from .sd import encode_prompts

    strength = float(strength)
    if not 0 <= strength <= 1:
        raise ValueError(f"stage2_strength must be in [0, 1], got {strength}")
    if strength == 0:
        return image.copy()
    steps = int(params["num_inference_steps"])
    if int(steps * strength) < 1:
        raise ValueError(f"stage2_strength {strength} x num_inference_steps {steps} leaves no denoising step")
    img2img = build_img2img(pipe)
    positive, negative = encode_prompts(img2img, [prompt], params.get("negative_prompt", ""),
                                        img2img.device)[prompt]
    pixels = img2img(prompt_embeds=positive, negative_prompt_embeds=negative, image=image.convert("RGB"),
                     strength=strength, num_inference_steps=steps, guidance_scale=float(params["guidance_scale"]),
                     generator=torch.Generator("cpu").manual_seed(int(seed)), output_type="np").images
    return finite_pil(img2img.image_processor, pixels, [label or f"image (seed {seed})"], "tcig stage 2")[0]


# --- one shard job ------------------------------------------------------------------------

def run_shard(config: dict, sd_key: str, clip_key: str, deeplab_key: str, inputs_csv: str,
              out_dir: str, params: dict, vqmodel_key: str | None = None,
              target_classes: str = "voc") -> pd.DataFrame:
    """One job: stage 1 + stage 2 for every input row (read_inputs) and sample.
    `vqmodel_key` names the models entry (kind vqmodel) that decoder vqmodel optimises.
    `target_classes` names the items' target classes (regions.TARGET_CLASSES: the dataset's
    setting); every one must be a class of the segmenter `deeplab_key`, checked before any
    model loads.

    Writes into out_dir (atomically): the final images `<item>_<sample:02d>.png`, the
    stage-1 images `stage1/<item>_<sample:02d>.png` with their loss histories
    `stage1/<item>_<sample:02d>_loss.csv`, the target masks at the image size
    `masks/<item>_<class>.png`, params.json, and manifest.csv last.
    """
    inputs_csv = Path(inputs_csv)
    inputs = read_inputs(inputs_csv)
    height, width = int(params["height"]), int(params["width"])
    targets = check_all_masks(inputs, inputs_csv, height, width, "TCIG", target_classes)
    check_segmenter_classes(targets, segmenter_vocabulary(config, deeplab_key), deeplab_key, "TCIG")
    device = resolve_device(config)
    dtype = resolve_dtype(config, device)
    n = int(params.get("samples_per_item", 1))
    keys = [sd_key, clip_key, deeplab_key]
    use_vqmodel = _choice(params, "decoder", DECODERS) == "vqmodel"
    if use_vqmodel:
        if not vqmodel_key:
            raise ValueError("TCIG decoder vqmodel needs vqmodel_key: the method's `vqmodel` setting, a model of "
                             "kind vqmodel (docs/models.md)")
        keys.append(vqmodel_key)
    models = {key: config["models"][key] for key in keys}
    with io.atomic_dir(out_dir) as tmp:
        records = []
        if len(inputs):
            # The VQGAN first: a missing one fails before SD is loaded.
            vqmodel = load_model(config, vqmodel_key, device, dtype) if use_vqmodel else None
            pipe = load_model(config, sd_key, device=device, dtype=dtype)
            clip = load_model(config, clip_key, device=device, dtype=dtype)
            deeplab = load_model(config, deeplab_key, device=device, dtype=dtype)
            decoder = build_decoder(params, pipe, vqmodel)
            img2img = build_img2img(pipe)
            (tmp / STAGE1_DIR).mkdir()
            for k, (_, row) in enumerate(inputs.iterrows()):
                safe = io.safe_name(row["item_id"])
                masks = item_masks(row, inputs_csv.parent, height, width, target_classes=target_classes)
                mask_files = save_item_masks(tmp, row["item_id"], masks)
                for sample in range(n):
                    seed = int(params["seed"]) + sample
                    stem = f"{safe}_{sample:02d}"
                    label = f"item {row['item_id']} sample {sample}"
                    first, history = stage1(decoder, clip, deeplab, row["prompt"], masks, params, seed, label)
                    io.save_image(tmp / STAGE1_DIR / f"{stem}.png", first)
                    io.write_csv(tmp / STAGE1_DIR / f"{stem}_loss.csv", pd.DataFrame(history))
                    final = stage2(img2img, first, row["prompt"], params["stage2_strength"], params, seed, label)
                    io.save_image(tmp / f"{stem}.png", final)
                    records.append({
                        "item_id": row["item_id"], "sample": sample, "image": f"{stem}.png",
                        "prompt": row["prompt"], "seed": seed, "class_name": row.get("class_name", ""),
                        "source_image": row.get("image", ""), "stage1_image": f"{STAGE1_DIR}/{stem}.png",
                        "stage1_final_loss": history[-1]["loss"], "masks": mask_files})
                log.info("TCIG: %d/%d items done", k + 1, len(inputs))
        manifest = pd.DataFrame(records, columns=MANIFEST_COLUMNS)
        io.write_json(tmp / "params.json", io.provenance(
            method="tcig", params=params, model=models, device=device, dtype=str(dtype),
            target_classes=target_classes,
            text_handling={"stage1_clip": "open_clip tokenizer (truncated at its context length)",
                           "stage2_sd": TEXT_HANDLING},
            torch_threads=torch.get_num_threads(), n_items=len(inputs)))
        io.write_csv(tmp / "manifest.csv", manifest)
    return manifest
