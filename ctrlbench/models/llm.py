"""Causal language models for LLM prompts (mmm2025), tiny or real, through one loader.

`load_causal_lm` reads any transformers causal LM folder or Hugging Face id (e.g.
meta-llama/Llama-2-7b-chat-hf) and wraps it in `LocalLM`, whose `generate` does
batched, left-padded generation and returns only the new text.

The tiny stand-in is a 2-layer `LlamaForCausalLM` with random weights and a small
byte-level BPE tokenizer trained here on a built-in English corpus of bird and flower
descriptions (`train_tiny_tokenizer`; also meant for the tiny Llama text encoder of
ParaDiffusion). Its output means nothing; it exists so the LLM-prompt jobs run on a CPU
without downloads.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# --- tiny tokenizer ---------------------------------------------------------------------

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]  # ids 0..3, in this order
TINY_VOCAB_SIZE = 1024
TINY_MAX_LENGTH = 2048
# Llama-2-chat's prompt format ([INST] ... [/INST]), so the chat code path runs on the
# tiny model exactly as on a real chat model.
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}"
    "{% set messages = messages[1:] %}{% else %}{% set system = '' %}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + (system if loop.first else '') + message['content'] + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

_COLORS = ["black", "white", "grey", "brown", "red", "orange", "yellow", "green", "blue",
           "purple", "pink", "buff", "olive", "iridescent", "rufous", "crimson", "violet"]
_BIRD_PARTS = ["bill", "wing", "wings", "crown", "throat", "breast", "belly", "back", "tail",
               "nape", "forehead", "eye", "eyes", "leg", "legs", "head", "upperparts",
               "underparts", "feathers", "primaries"]
_BIRD_WORDS = ["has", "bill", "shape", "length", "about", "the", "same", "as", "head",
               "shorter", "longer", "than", "pattern", "solid", "spotted", "striped", "multi",
               "colored", "size", "small", "medium", "large", "very", "cone", "dagger",
               "hooked", "seabird", "needle", "spatulate", "curved", "all", "purpose",
               "pointed", "rounded", "notched", "forked", "squared", "perching", "like"]
_SPECIES = ["Black footed Albatross", "Laysan Albatross", "Sooty Albatross", "Groove billed Ani",
            "Crested Auklet", "Least Auklet", "Parakeet Auklet", "Rhinoceros Auklet",
            "Brewer Blackbird", "Red winged Blackbird", "Rusty Blackbird", "Bobolink",
            "Indigo Bunting", "Lazuli Bunting", "Painted Bunting", "Cardinal", "Gray Catbird",
            "Yellow breasted Chat", "Eastern Towhee", "Brandt Cormorant", "Bronzed Cowbird",
            "Fish Crow", "Black billed Cuckoo", "Mangrove Cuckoo", "Acadian Flycatcher",
            "Northern Fulmar", "Gadwall", "American Goldfinch", "Boat tailed Grackle",
            "Eared Grebe", "Evening Grosbeak", "Pigeon Guillemot", "California Gull",
            "Ivory Gull", "Western Gull", "Anna Hummingbird", "Ruby throated Hummingbird",
            "Green Violetear", "Long tailed Jaeger", "Blue Jay", "Florida Jay", "Dark eyed Junco",
            "Tropical Kingbird", "Pied Kingfisher", "Red legged Kittiwake", "Horned Lark",
            "Pacific Loon", "Mallard", "Western Meadowlark", "Hooded Merganser", "Mockingbird",
            "Nighthawk", "Clark Nutcracker", "Baltimore Oriole", "Ovenbird", "Brown Pelican",
            "Western Wood Pewee", "Sayornis", "American Pipit", "Whip poor Will", "Horned Puffin",
            "Common Raven", "American Redstart", "Geococcyx", "Loggerhead Shrike",
            "Great Grey Shrike", "Baird Sparrow", "Song Sparrow", "Cape Glossy Starling",
            "Bank Swallow", "Barn Swallow", "Scarlet Tanager", "Arctic Tern", "Caspian Tern",
            "Green tailed Towhee", "Brown Thrasher", "White eyed Vireo", "Cerulean Warbler",
            "Magnolia Warbler", "Northern Waterthrush", "Bohemian Waxwing", "Cedar Waxwing",
            "Pileated Woodpecker", "Red headed Woodpecker", "Bewick Wren", "Cactus Wren",
            "Marsh Wren", "Common Yellowthroat", "Northern Flicker"]
_FLOWERS = ["pink primrose", "hard leaved pocket orchid", "canterbury bells", "sweet pea",
            "english marigold", "tiger lily", "moon orchid", "bird of paradise", "monkshood",
            "globe thistle", "snapdragon", "colt's foot", "king protea", "spear thistle",
            "yellow iris", "globe flower", "purple coneflower", "peruvian lily",
            "balloon flower", "giant white arum lily", "fire lily", "pincushion flower",
            "fritillary", "red ginger", "grape hyacinth", "corn poppy", "prince of wales feathers",
            "stemless gentian", "artichoke", "sweet william", "carnation", "garden phlox",
            "love in the mist", "mexican aster", "alpine sea holly", "ruby lipped cattleya",
            "cape flower", "great masterwort", "siam tulip", "lenten rose", "barbeton daisy",
            "daffodil", "sword lily", "poinsettia", "bolero deep blue", "wallflower", "marigold",
            "buttercup", "oxeye daisy", "common dandelion", "petunia", "wild pansy", "primula",
            "sunflower", "pelargonium", "bishop of llandaff", "gaura", "geranium", "orange dahlia",
            "pink yellow dahlia", "cautleya spicata", "japanese anemone", "black eyed susan",
            "silverbush", "californian poppy", "osteospermum", "spring crocus", "bearded iris",
            "windflower", "tree poppy", "gazania", "azalea", "water lily", "rose", "thorn apple",
            "morning glory", "passion flower", "lotus", "toad lily", "anthurium", "frangipani",
            "clematis", "hibiscus", "columbine", "desert rose", "tree mallow", "magnolia",
            "cyclamen", "watercress", "canna lily", "hippeastrum", "bee balm", "ball moss",
            "foxglove", "bougainvillea", "camellia", "mallow", "mexican petunia", "bromelia",
            "blanket flower", "trumpet creeper", "blackberry lily"]
_FLOWER_PARTS = ["petals", "petal", "stamen", "stamens", "pistil", "center", "stem", "leaves",
                 "sepals", "anthers", "pollen", "bud", "blossom"]
_FILLERS = [
    "Please use less than 120 words to describe the bird with the following words.",
    "Please use less than 120 words to describe the flower with the following words.",
    "This bird is small with a short pointed bill and it is perching on a branch.",
    "The flower has long thin petals that spread out from a bright center.",
    "A photo of a bird of this species, standing in the grass near the water.",
    "It has a distinctive pattern on its wings and a long tail that it holds upright.",
    "The petals are soft and wavy, with darker veins that run toward the edges.",
    "Sure! Here is a description in less than 120 words of the bird you asked for.",
]


def tiny_corpus() -> list[str]:
    """The built-in English training text: bird and flower descriptions in the words of
    CUB attributes, species and Flowers-102 class names (deterministic)."""
    lines = list(_FILLERS)
    for i, (color, part) in enumerate(itertools.product(_COLORS, _BIRD_PARTS)):
        species = _SPECIES[i % len(_SPECIES)]
        other = _COLORS[(i * 7 + 3) % len(_COLORS)]
        word = _BIRD_WORDS[i % len(_BIRD_WORDS)]
        lines.append(f"The {species} is a bird with a {color} {part} and {other} {word} "
                     f"feathers, {i % 9 + 2} inches long.")
    for i, (color, part) in enumerate(itertools.product(_COLORS, _FLOWER_PARTS)):
        flower = _FLOWERS[i % len(_FLOWERS)]
        lines.append(f"This {flower} has {color} {part}; the flower({flower}) is "
                     f"{_COLORS[(i * 5 + 1) % len(_COLORS)]} in the middle.")
    for i, species in enumerate(_SPECIES):
        lines.append(f"Please use less than 120 words to describe the bird({species}) with the "
                     f"following words: has wing color::{_COLORS[i % len(_COLORS)]}, has bill "
                     f"shape::{_BIRD_WORDS[i % len(_BIRD_WORDS)]}, has size::small (5 - 9 in).")
    for i, flower in enumerate(_FLOWERS):
        lines.append(f"A {flower} is a flower with {_COLORS[i % len(_COLORS)]} "
                     f"{_FLOWER_PARTS[i % len(_FLOWER_PARTS)]}.")
    lines.append(" ".join(_BIRD_WORDS))
    return lines


def train_tiny_tokenizer(out_dir: str | Path, vocab_size: int = TINY_VOCAB_SIZE,
                         corpus: list[str] | None = None):
    """Train a byte-level BPE tokenizer on `corpus` (default: `tiny_corpus()`), save it
    in the Hugging Face format (tokenizer.json + tokenizer_config.json, with a Llama-2
    chat template) into `out_dir` and return it as a PreTrainedTokenizerFast.

    Like Llama's tokenizer it prepends <s> and appends nothing; pad is <pad> (id 0),
    bos <s> (1), eos </s> (2), unk <unk> (3). Every byte is in the vocabulary, so any
    text encodes. `AutoTokenizer.from_pretrained(out_dir)` reloads it.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, show_progress=False,
                                  special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus if corpus is not None else tiny_corpus(), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, tok.token_to_id(BOS))])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        model_max_length=TINY_MAX_LENGTH, clean_up_tokenization_spaces=False)
    tokenizer.chat_template = LLAMA2_CHAT_TEMPLATE
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer


# --- tiny Llama --------------------------------------------------------------------------

TINY_LLAMA = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 4,
              "max_position_embeddings": TINY_MAX_LENGTH}


def tiny_llama_config(tokenizer, **overrides):
    """A LlamaConfig of TINY_LLAMA size for `tokenizer` (vocab and special token ids)."""
    from transformers import LlamaConfig

    spec = {**TINY_LLAMA, **overrides}
    return LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       tie_word_embeddings=False, **spec)


def build_tiny_causal_lm(out_dir: str | Path) -> None:
    """A random-weight LlamaForCausalLM + the tiny tokenizer, saved with save_pretrained
    (safetensors) into `out_dir`. Deterministic given torch.manual_seed (the caller seeds).

    The output rows of the special tokens are zeroed: their logits are always 0 while the
    largest of ~1000 random logits is positive, so the tiny model never ends (or pads) a
    generation early and always answers with max_new_tokens of text.
    """
    from transformers import GenerationConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = train_tiny_tokenizer(out_dir)
    model = LlamaForCausalLM(tiny_llama_config(tokenizer))
    with torch.no_grad():
        for token in SPECIAL_TOKENS:
            model.lm_head.weight[tokenizer.convert_tokens_to_ids(token)] = 0
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(str(out_dir), safe_serialization=True)


# --- loading and generation ---------------------------------------------------------------

@dataclass
class LocalLM:
    """A transformers causal LM with its tokenizer, for batched prompt generation."""

    model: Any
    tokenizer: Any
    device: str = "cpu"
    name: str = ""

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def format(self, text: str, chat: bool = False) -> str:
        """The exact text fed to the model for a request (chat template applied if chat)."""
        if not chat:
            return text
        if not self.has_chat_template:
            from ..prompts.llm import LLMError

            raise LLMError(f"model {self.name or '?'}: api 'chat' asks for the tokenizer's chat "
                           f"template but it has none; set api: completions for a base model")
        return self.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                  tokenize=False, add_generation_prompt=True)

    @torch.no_grad()
    def generate(self, texts: list[str], max_new_tokens: int = 256, temperature: float = 0.0,
                 seed: int | None = 0, chat: bool = False) -> list[str]:
        """Continue every text of `texts` in one left-padded batch; greedy when
        temperature == 0, else sampling at `temperature` seeded with `seed` (the global
        RNG state is left as it was). Returns only the new text of each, special tokens
        removed."""
        if not texts:
            return []
        tok = self.tokenizer
        inputs = [self.format(t, chat) for t in texts]
        # A chat template writes <s> itself; plain text gets the tokenizer's own.
        enc = tok(inputs, return_tensors="pt", padding=True, padding_side="left",
                  add_special_tokens=not chat).to(self.device)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        kwargs = {"max_new_tokens": int(max_new_tokens), "pad_token_id": pad_id}
        if temperature and temperature > 0:
            kwargs.update(do_sample=True, temperature=float(temperature))
        else:
            # Override sampling settings a chat model's generation_config may carry.
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with _seeded(seed, self.device):
            out = self.model.generate(**enc, **kwargs)
        new = out[:, enc["input_ids"].shape[1]:]
        return tok.batch_decode(new, skip_special_tokens=True)


@contextlib.contextmanager
def _seeded(seed: int | None, device: str):
    if seed is None:
        yield
        return
    devices = [torch.device(device).index or 0] if str(device).startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def load_causal_lm(where, device: str = "cpu", dtype=torch.float32) -> LocalLM:
    """Load a causal LM (AutoModelForCausalLM + AutoTokenizer) from a folder or hub id.

    `where` is loaders._Where. Raises ModelNotFoundError (via where.missing) when the
    model is not on disk or in the Hugging Face cache and may not be downloaded.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .loaders import _hub_cached

    revision = where.entry.get("revision")
    get = (f"`hf download {where.source} --local-dir <dir>` (gated models such as "
           f"meta-llama/* need `hf auth login` and an accepted licence first), then set "
           f"models.{where.key}.source to <dir>")
    if where.local:
        if not (Path(where.source) / "config.json").is_file():
            raise where.missing(f"{where.source} has no config.json; it is not a transformers "
                                f"causal LM folder (config.json, weights, tokenizer)")
    elif where.offline and _hub_cached(where.source, "config.json", revision) is None:
        raise where.missing(f"it is not a local folder and the Hugging Face repo is not in the "
                            f"local cache (hub_offline: true). Get it with {get}, or set "
                            f"hub_offline: false to let it download")
    kwargs = {"local_files_only": where.offline}
    if revision:
        kwargs["revision"] = revision
    try:
        tokenizer = AutoTokenizer.from_pretrained(where.source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where.source, dtype=dtype, **kwargs)
    except OSError as exc:  # incomplete folder or cache
        raise where.missing(f"{where.source} is incomplete: {exc}. Get it with {get}") from exc
    if tokenizer.pad_token is None:  # Llama-2's tokenizer has no pad token
        tokenizer.pad_token = tokenizer.eos_token
    model = model.to(device).eval().requires_grad_(False)
    return LocalLM(model, tokenizer, device, name=where.key)
