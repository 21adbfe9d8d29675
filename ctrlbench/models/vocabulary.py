"""The class vocabulary of a segmenter: which class each output channel is.

torchvision's DeepLabV3 weights (COCO_WITH_VOC_LABELS_V1) and the tiny stand-in segment the
21 Pascal VOC classes (`VOC`; COCO's names of the same classes are aliases, so "tv" is
"tvmonitor"). A segmenter folder (model.safetensors + deeplabv3.json) names its own classes
in the json's `classes` list, in channel order; the toy world's ToyFCN has background + five
shapes. Channel 0 is the background in every vocabulary.

Torch-free: the config check reads vocabularies when the config loads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from .registry import is_tiny, model_source

# torchvision.models.segmentation's _VOC_CATEGORIES, in output-channel order.
VOC_CLASSES = (
    "__background__", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
NUM_VOC_CLASSES = len(VOC_CLASSES)

# COCO 2017 category name -> VOC channel (the 20 COCO categories with a VOC counterpart).
COCO_TO_VOC = {
    "airplane": 1, "bicycle": 2, "bird": 3, "boat": 4, "bottle": 5, "bus": 6, "car": 7, "cat": 8,
    "chair": 9, "cow": 10, "dining table": 11, "dog": 12, "horse": 13, "motorcycle": 14, "person": 15,
    "potted plant": 16, "sheep": 17, "couch": 18, "train": 19, "tv": 20,
}

# Names of channel 0 in every vocabulary, besides its own name.
BACKGROUND_ALIASES = ("background", "bg")
DEEPLAB_JSON = "deeplabv3.json"  # {"builder", "num_classes"[, "classes"]} next to model.safetensors


def _key(name: str) -> str:
    return name.strip().lower()


@dataclass(frozen=True)
class ClassVocabulary:
    """The classes of a segmenter's output channels: channel k is names[k], channel 0 the
    background. `name` says whose vocabulary it is, in messages. `aliases` are other names
    of a channel (VOC: the COCO category names)."""

    names: tuple[str, ...]
    name: str
    aliases: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        if len(self.names) < 2 or not all(isinstance(n, str) and n.strip() for n in self.names):
            raise ValueError(f"{self.name}: a class vocabulary is the background and at least one object class, "
                             f"each a non-empty name; got {list(self.names)}")
        keys = [_key(n) for n in self.names]
        twice = sorted({n for n in keys if keys.count(n) > 1})
        if twice:
            raise ValueError(f"{self.name}: class name(s) {twice} appear more than once")

    @property
    def objects(self) -> tuple[str, ...]:
        """The object classes: every class but the background."""
        return self.names[1:]

    def index(self, key) -> int:
        """The channel of a class name (case and surrounding spaces ignored), an alias, or an
        index (int or digit string). KeyError naming the value and the classes otherwise."""
        if isinstance(key, bool):
            raise KeyError(f"{key!r} is not a class of {self.name}")
        if isinstance(key, int) or (isinstance(key, str) and key.strip().isdigit()):
            index = int(key)
            if 0 <= index < len(self.names):
                return index
            raise KeyError(f"{self.name} class index {index} is out of range 0-{len(self.names) - 1}")
        if isinstance(key, str):
            wanted = _key(key)
            for index, name in enumerate(self.names):
                if _key(name) == wanted:
                    return index
            if wanted in self.aliases:
                return self.aliases[wanted]
            if wanted in BACKGROUND_ALIASES:
                return 0
        raise KeyError(f"{key!r} is not a class of {self.name} ({self.describe()})")

    def __contains__(self, key) -> bool:
        try:
            self.index(key)
        except KeyError:
            return False
        return True

    def canonical(self, key) -> str:
        """The vocabulary's own name of a class ("tv" -> "tvmonitor" in VOC)."""
        return self.names[self.index(key)]

    def describe(self) -> str:
        """Its object classes, and its aliases if any, for messages."""
        text = ", ".join(self.objects)
        return text + (f"; also named: {', '.join(self.aliases)}" if self.aliases else "")


VOC = ClassVocabulary(VOC_CLASSES, "VOC", dict(COCO_TO_VOC))


def folder_vocabulary(spec: dict, json_path) -> ClassVocabulary:
    """The vocabulary a segmenter folder's json declares: `classes`, in channel order with the
    background first (it must have num_classes names), or Pascal VOC when `classes` is absent
    and num_classes is 21 (the tiny stand-in). ValueError naming the file otherwise."""
    classes, count = spec.get("classes"), spec.get("num_classes")
    if classes is None:
        if count != NUM_VOC_CLASSES:
            raise ValueError(f"{json_path}: num_classes is {count}, so it needs 'classes': the {count} class names "
                             f"in output-channel order, background first (only a {NUM_VOC_CLASSES}-class segmenter "
                             f"without 'classes' is taken as Pascal VOC)")
        return VOC
    if not isinstance(classes, list) or len(classes) != count:
        raise ValueError(f"{json_path}: 'classes' must list num_classes ({count}) names, got {classes!r}")
    if tuple(classes) == VOC_CLASSES:
        return VOC
    try:
        return ClassVocabulary(tuple(classes), f"{spec.get('builder')} ({Path(json_path).parent})")
    except ValueError as error:
        raise ValueError(f"{json_path}: {error}") from None


def read_folder_vocabulary(folder, key: str) -> ClassVocabulary:
    """folder_vocabulary of a segmenter folder's json; ConfigError naming models.<key>."""
    path = Path(folder) / DEEPLAB_JSON
    try:
        spec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"models.{key}.source: {folder} is not a segmenter folder: cannot read {path} "
                          f"({error})") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"models.{key}.source: {path} must hold a JSON object")
    try:
        return folder_vocabulary(spec, path)
    except ValueError as error:
        raise ConfigError(f"models.{key}.source: {error}") from None


def segmenter_vocabulary(config: dict, key: str) -> ClassVocabulary | None:
    """The vocabulary of models.<key> (kind deeplabv3) without loading its weights: a folder's
    json (folder_vocabulary); Pascal VOC for torchvision weights (a file or a tag) and for a
    tiny build not built yet (build_tiny always makes a VOC one). None for a folder or file
    that does not exist yet: the loader says what is missing when a job needs it."""
    source = model_source(config, key)
    path = Path(source).expanduser()
    if path.is_dir():
        return read_folder_vocabulary(path, key)
    if is_tiny(config, key) or path.is_file():
        return VOC
    looks_like_path = "/" in source or "\\" in source or source.startswith((".", "~"))
    return None if looks_like_path else VOC  # a torchvision weights tag

