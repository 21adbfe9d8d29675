"""Long prompts in 77-token chunks (ctrlbench.prompts.long_prompt) on the tiny SD text encoder."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from ctrlbench.models.tiny import build_tiny
from ctrlbench.prompts.long_prompt import chunk_ids, count_tokens, encode_long_prompts, n_chunks

SHORT = "a photo of Laysan Albatross, a bird of this species with white underparts and a hooked bill."
WORDS = ["red", "blue", "green", "small", "large"]  # one CLIP token each


def words(n, offset=0):
    return " ".join(WORDS[(i + offset) % len(WORDS)] for i in range(n))


@pytest.fixture(scope="module")
def sd_pipe(tmp_path_factory):
    from diffusers import StableDiffusionPipeline

    folder = build_tiny("sd", tmp_path_factory.mktemp("long_prompt") / "sd")
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def encode(pipe, prompts, negatives=None):
    return encode_long_prompts(pipe.tokenizer, pipe.text_encoder, prompts, negatives, "cpu")


def test_count_tokens_and_chunks(sd_pipe):
    tok = sd_pipe.tokenizer
    assert count_tokens(tok, "a photo of a cat") == 5
    assert count_tokens(tok, "") == 0 and n_chunks(tok, "") == 1
    assert count_tokens(tok, words(200)) == 200
    assert [n_chunks(tok, words(n)) for n in (1, 75, 76, 150, 151, 200)] == [1, 1, 2, 2, 3, 3]
    # a short prompt's chunk is exactly what the tokenizer gives with max_length padding
    expected = tok(SHORT, padding="max_length", max_length=77, truncation=True).input_ids
    assert chunk_ids(tok, SHORT) == [list(expected)]
    chunks = chunk_ids(tok, words(200))
    assert all(len(c) == 77 and c[0] == tok.bos_token_id for c in chunks)
    content = tok(words(200), add_special_tokens=False, verbose=False).input_ids
    assert chunks[2][1:51] == content[150:200] and chunks[2][51] == tok.eos_token_id
    assert chunks[2][52:] == [tok.pad_token_id] * 25
    assert chunk_ids(tok, "", k=2)[1] == list(tok("", padding="max_length", max_length=77).input_ids)
    with pytest.raises(ValueError, match="needs 3 chunks"):
        chunk_ids(tok, words(200), k=2)


@pytest.mark.parametrize("negative", [None, "", "lowres, bad anatomy, worst quality"])
def test_short_prompt_equals_diffusers_encode_prompt(sd_pipe, negative):
    expected = sd_pipe.encode_prompt(SHORT, "cpu", 1, True, negative or None)
    embeds, negative_embeds = encode(sd_pipe, [SHORT], None if negative is None else [negative])
    assert embeds.shape == (1, 77, 32) and embeds.dtype == expected[0].dtype
    assert torch.equal(embeds, expected[0])  # atol 0
    assert torch.equal(negative_embeds, expected[1])


def test_75_content_tokens_still_equal_diffusers(sd_pipe):
    prompt = words(75)
    expected, _ = sd_pipe.encode_prompt(prompt, "cpu", 1, True)
    assert torch.equal(encode(sd_pipe, [prompt])[0], expected)


def test_long_prompt_is_chunked_not_truncated(sd_pipe):
    head = words(150)
    prompt, other_tail = f"{head} {words(50)}", f"{head} {words(50, offset=1)}"
    embeds, negative = encode(sd_pipe, [prompt])
    assert embeds.shape == negative.shape == (1, 3 * 77, 32)
    other, _ = encode(sd_pipe, [other_tail])
    # chunks 1-2 (the first 150 tokens) are the same; chunk 3 follows the prompt's tail
    assert torch.equal(embeds[:, :154], other[:, :154])
    assert (embeds[:, 154:] - other[:, 154:]).abs().max() > 1e-3
    # diffusers would have kept only the first 75 tokens: its embeddings equal our chunk 1
    truncated, _ = sd_pipe.encode_prompt(prompt, "cpu", 1, True)
    assert torch.equal(embeds[:, :77], truncated)
    # the negative side is "" padded with empty chunks to the same length
    empty, _ = encode(sd_pipe, [""])
    assert torch.equal(negative, empty.repeat(1, 3, 1))


def test_batch_gets_one_chunk_count(sd_pipe):
    long_prompt = words(200)
    embeds, negative = encode(sd_pipe, [SHORT, long_prompt], ["ugly", ""])
    assert embeds.shape == negative.shape == (2, 3 * 77, 32)
    alone, alone_negative = encode(sd_pipe, [SHORT], ["ugly"])
    empty, _ = encode(sd_pipe, [""])
    # the short prompt: its own chunk, then empty chunks; its embeddings do not depend on the batch
    assert torch.equal(embeds[0, :77], alone[0])
    assert torch.equal(embeds[0, 77:], empty[0].repeat(2, 1))
    assert torch.equal(negative[0, :77], alone_negative[0])
    assert torch.equal(embeds[1], encode(sd_pipe, [long_prompt])[0][0])


def test_long_negative_prompt_sets_the_chunk_count(sd_pipe):
    embeds, negative = encode(sd_pipe, ["a bird"], [words(100)])
    assert embeds.shape == negative.shape == (1, 2 * 77, 32)


def test_empty_and_mismatched_inputs(sd_pipe):
    embeds, negative = encode(sd_pipe, [])
    assert embeds.shape == negative.shape == (0, 77, 32)
    with pytest.raises(ValueError, match="2 negative prompts for 1 prompts"):
        encode(sd_pipe, ["a"], ["b", "c"])


# --- the mmm2025 authors' handlings (text_handling "truncate" and "authors") ------------------

def prompt2img_embeddings(pipe, prompt):
    """stable-diffusion/prompt2img.py of github byeolnim11/mmm2025, line by line, as reference:
    the first line of the prompt file cut to 800 characters, unpadded ids, 77-id slices."""
    prompt = prompt.split("\n")[0][:min(800, len(prompt))]
    input_ids = pipe.tokenizer(prompt, return_tensors="pt").input_ids
    negative_ids = pipe.tokenizer("", truncation=False, padding="max_length", max_length=input_ids.shape[-1],
                                  return_tensors="pt").input_ids
    concat, negative = [], []
    for i in range(0, input_ids.shape[-1], 77):
        concat.append(pipe.text_encoder(input_ids[:, i: i + 77])[0])
        negative.append(pipe.text_encoder(negative_ids[:, i: i + 77])[0])
    return torch.cat(concat, dim=1), torch.cat(negative, dim=1)


@torch.no_grad()
@pytest.mark.parametrize("prompt", [SHORT, words(200), f"{words(30)}\n{words(60, offset=2)}", "a " * 600])
def test_authors_handling_equals_prompt2img(sd_pipe, prompt):
    expected, expected_negative = prompt2img_embeddings(sd_pipe, prompt)
    embeds, negative = encode_long_prompts(sd_pipe.tokenizer, sd_pipe.text_encoder, [prompt], None, "cpu",
                                           handling="authors")
    assert embeds.shape == expected.shape and negative.shape == expected_negative.shape
    assert torch.equal(embeds, expected) and torch.equal(negative, expected_negative)


def test_authors_handling_is_unpadded_and_cut(sd_pipe):
    tok = sd_pipe.tokenizer

    def encode_as(handling, prompt, negative=None):
        return encode_long_prompts(tok, sd_pipe.text_encoder, [prompt], negative, "cpu", handling=handling)[0]

    # a short prompt is as long as its ids (BOS + 5 + EOS), not padded to 77
    assert encode_as("authors", "a photo of a cat").shape == (1, 7, 32)
    # 120 content tokens (under 800 characters): 122 ids in slices of 77 and 45; slice 2
    # starts without BOS
    assert len(words(120)) < 800
    long = encode_as("authors", words(120))
    assert long.shape == (1, 122, 32)
    ids = tok(words(120)).input_ids
    assert ids[77] != tok.bos_token_id
    assert torch.equal(long[:, 77:], sd_pipe.text_encoder(torch.tensor([ids[77:]]))[0])
    # only the first line counts, and only its first 800 characters
    assert torch.equal(encode_as("authors", f"{SHORT}\nanother line"), encode_as("authors", SHORT))
    assert torch.equal(encode_as("authors", "red " * 300), encode_as("authors", ("red " * 300)[:800]))
    assert encode_as("authors", "red " * 300).shape == (1, 202, 32)  # 800 characters = 200 words
    assert not torch.equal(encode_as("authors", "red " * 300)[:, :152], encode_as("authors", "red " * 150))
    # the three handlings of a long prompt differ
    chunked, truncated = encode_as("chunked", words(120)), encode_as("truncate", words(120))
    assert chunked.shape == (1, 154, 32) and truncated.shape == (1, 77, 32)
    assert not torch.equal(long[:, :77], chunked[:, :77])  # authors' first slice has no EOS at 77
    # a negative prompt longer than the prompt cannot be padded to its length
    with pytest.raises(ValueError, match="negative prompt .* is longer than the prompt"):
        encode_as("authors", "a cat", [words(20)])
    with pytest.raises(ValueError, match="unknown text_handling"):
        encode_as("nope", "a cat")


def test_truncate_handling_equals_diffusers_for_long_prompts(sd_pipe):
    prompt = words(200)
    expected, expected_negative = sd_pipe.encode_prompt(prompt, "cpu", 1, True, "lowres")
    embeds, negative = encode_long_prompts(sd_pipe.tokenizer, sd_pipe.text_encoder, [prompt], ["lowres"], "cpu",
                                           handling="truncate")
    assert torch.equal(embeds, expected) and torch.equal(negative, expected_negative)
