"""LLM prompts (ctrlbench.prompts.llm) against a real local OpenAI-format HTTP server,
and the tiny causal LM (ctrlbench.models.llm) as the local backend."""

import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import pytest

from ctrlbench.errors import CtrlbenchError, ModelNotFoundError
from ctrlbench.prompts.llm import (LLM_PROMPT_DEFAULTS, LLM_REQUEST_TEMPLATE, LLMError,
                                   OpenAICompatibleClient, build_request, clean_answer,
                                   llm_prompts_for_shard)

SECRET = "sk-test-do-not-print-1234"
ITEMS = [  # item_id, class_name, attributes (CUB names)
    ("0001", "Black footed Albatross", ["has_bill_shape::hooked_seabird", "has_wing_color::black",
                                        "has_size::large_(16_-_32_in)"]),
    ("0002", "Laysan Albatross", ["has_wing_color::white", "has_bill_color::buff"]),
    ("0003", "Painted Bunting", ["has_breast_color::red"]),
    ("0004", "Blue Jay", []),
    ("0005", "Cedar Waxwing", ["has_crown_color::brown", "has_tail_pattern::solid"]),
    ("0006", "Song Sparrow", ["has_breast_pattern::striped"]),
]
PAPER_REQUEST = ("Please use less than 120 words to describe the bird(Black footed Albatross) with "
                 "the following words: has bill shape::hooked seabird, has wing color::black, "
                 "has size::large (16 - 32 in).")


# --- a local server speaking the OpenAI wire format ---------------------------------------

class FakeLLM(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.release = threading.Event()  # wakes "slow" handlers at shutdown
        self.reset()

    def reset(self, mode="ok", delay=0.0, fail_for=()):
        with self.lock:
            self.mode, self.delay, self.fail_for = mode, delay, tuple(fail_for)
            self.requests, self.in_flight, self.max_in_flight = [], 0, 0

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def handle_error(self, request, client_address):  # a client that timed out and left
        pass


def answer_for(text):
    """The server's deterministic 'description': quoted, padded with whitespace."""
    return f'  "A photo of a bird: {text[47:90]}"\n'


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        text = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
        with server.lock:
            n = len(server.requests)
            server.requests.append({"path": self.path, "body": body,
                                    "auth": self.headers.get("Authorization")})
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
            mode = server.mode
        self.counted = True
        try:
            time.sleep(server.delay)
            if mode == "slow":
                server.release.wait(2.0)
            if any(name in text for name in server.fail_for):
                return self._send(500, "model crashed on this one")
            if mode == "500_then_ok" and n == 0:
                return self._send(500, "warming up")
            if mode == "503":
                return self._send(503, "overloaded " * 50)
            if mode == "400":
                return self._send(400, json.dumps({"error": "bad request"}))
            if mode == "malformed":
                return self._send(200, '{"choices": [{"text": "unterminated')
            if mode == "no_choices":
                return self._send(200, json.dumps({"object": "text_completion", "error": None}))
            answer = {"empty": "   ", "quotes": ' "" '}.get(mode) or answer_for(text)
            if self.path.endswith("/chat/completions"):
                choice = {"index": 0, "message": {"role": "assistant", "content": answer}}
            else:
                choice = {"index": 0, "text": answer}
            self._send(200, json.dumps({"object": "x", "model": body["model"], "choices": [choice]}))
        finally:
            self._done()

    def _done(self):
        # Stop counting this request before its reply goes out: once the client has the
        # reply it may send its next request, which must not overlap this one's count.
        if self.counted:
            with self.server.lock:
                self.server.in_flight -= 1
            self.counted = False

    def _send(self, status, text):
        self._done()
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def server():
    srv = FakeLLM()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


@pytest.fixture
def llm(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    server.reset()
    return server


def write_items(path, items=ITEMS):
    rows = [{"item_id": i, "split": "test", "class_id": n + 1, "class_name": c,
             "image": f"images/{i}.jpg", "captions": "[]", "attributes": json.dumps(a)}
            for n, (i, c, a) in enumerate(items)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def cfg(server, **kw):
    base = {"kind": "llm", "backend": "openai", "base_url": server.base_url, "api": "completions",
            "endpoint_model": "llama-test", "timeout": 5.0, "retries": 2, "backoff": 0.01,
            "concurrency": 3, "max_tokens": 64, "seed": 7}
    return {**base, **kw}


def cache_lines(path):
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def unused_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- requests and answers ----------------------------------------------------------------

def test_request_follows_the_paper():
    _, name, attrs = ITEMS[0]
    assert build_request(LLM_REQUEST_TEMPLATE, name, attrs, "bird") == PAPER_REQUEST
    assert build_request(LLM_REQUEST_TEMPLATE, name, attrs, "bird", max_attributes=1) == (
        "Please use less than 120 words to describe the bird(Black footed Albatross) with the "
        "following words: has bill shape::hooked seabird.")
    # Flowers: no attributes, no "with the following words" clause
    assert build_request(LLM_REQUEST_TEMPLATE, "pink primrose", [], "flower") == (
        "Please use less than 120 words to describe the flower(pink primrose).")
    assert LLM_PROMPT_DEFAULTS["request_template"] == LLM_REQUEST_TEMPLATE
    assert LLM_PROMPT_DEFAULTS["kind"] == "llm"


def test_clean_answer_strips_whitespace_and_quotes():
    assert clean_answer('  "A black bird with a hooked bill."\n') == "A black bird with a hooked bill."
    assert clean_answer("'\u201cNested quotes.\u201d'") == "Nested quotes."
    assert clean_answer('The bird\'s "wings" are black') == 'The bird\'s "wings" are black'
    assert clean_answer('A bird called "Albatross"') == 'A bird called "Albatross"'
    assert clean_answer('"A long answer cut off by max_tok') == "A long answer cut off by max_tok"
    for empty in ["", "  \n", '""', "' '", '"']:
        with pytest.raises(LLMError, match="empty answer"):
            clean_answer(empty)


# --- the openai backend --------------------------------------------------------------------

def test_prompts_csv_and_cache(llm, tmp_path):
    items = write_items(tmp_path / "shard-000.csv")
    out, cache = tmp_path / "out" / "prompts.csv", tmp_path / "cache" / "llm.jsonl"
    frame = llm_prompts_for_shard(items, str(out), cfg(llm), "bird", str(cache))

    written = pd.read_csv(out, dtype={"item_id": str}, keep_default_na=False)
    assert list(written.columns) == ["item_id", "prompt", "class_name", "image", "request"]
    assert written["item_id"].tolist() == [i for i, _, _ in ITEMS]
    assert written["request"][0] == PAPER_REQUEST
    assert written["request"][3] == ("Please use less than 120 words to describe the bird(Blue Jay).")
    for row in written.itertuples():
        assert row.prompt == answer_for(row.request).strip().strip('"')
    assert written["image"][0] == "images/0001.jpg"
    pd.testing.assert_frame_equal(frame.astype(str), written.astype(str))

    sent = llm.requests
    assert len(sent) == len(ITEMS) and {r["path"] for r in sent} == {"/v1/completions"}
    assert sorted(r["body"]["prompt"] for r in sent) == sorted(written["request"])
    assert sent[0]["body"] | {"prompt": None} == {"model": "llama-test", "prompt": None,
                                                  "max_tokens": 64, "temperature": 0.0, "seed": 7}
    assert {r["auth"] for r in sent} == {f"Bearer {SECRET}"}
    lines = cache_lines(cache)
    assert len(lines) == len(ITEMS)
    assert set(lines[0]) == {"item_id", "request_sha1", "answer", "backend", "model"}
    assert {(x["backend"], x["model"]) for x in lines} == {("openai", "llama-test")}

    # rerun: everything comes from the cache, not one request
    llm.reset()
    out.unlink()
    llm_prompts_for_shard(items, str(out), cfg(llm), "bird", str(cache))
    assert llm.requests == []
    assert pd.read_csv(out, dtype={"item_id": str}, keep_default_na=False).equals(written)

    # a new request template re-asks every item
    llm_prompts_for_shard(items, str(out), cfg(llm, request_template="Describe the {class}: {attributes}."),
                          "bird", str(cache))
    assert len(llm.requests) == len(ITEMS)
    assert llm.requests[0]["body"]["prompt"].startswith("Describe the ")


def test_chat_api(llm, tmp_path):
    items = write_items(tmp_path / "s.csv", ITEMS[:2])
    out = tmp_path / "p.csv"
    frame = llm_prompts_for_shard(items, str(out), cfg(llm, api="chat"), "bird", str(tmp_path / "c.jsonl"))
    assert {r["path"] for r in llm.requests} == {"/v1/chat/completions"}
    body = llm.requests[0]["body"]
    assert "prompt" not in body and body["messages"][0]["role"] == "user"
    assert frame["prompt"][0] == answer_for(PAPER_REQUEST).strip().strip('"')


def test_retry_after_server_error(llm, tmp_path):
    llm.reset(mode="500_then_ok")
    items = write_items(tmp_path / "s.csv", ITEMS[:3])
    frame = llm_prompts_for_shard(items, str(tmp_path / "p.csv"), cfg(llm, concurrency=1),
                                  "bird", str(tmp_path / "c.jsonl"))
    assert len(llm.requests) == 4  # the first one failed with 500 and was retried
    assert len(frame) == 3 and frame["prompt"].str.len().gt(0).all()


def _fails(llm, tmp_path, match, **kw):
    items = write_items(tmp_path / "s.csv", ITEMS[:1])
    out, cache = tmp_path / "p.csv", tmp_path / "c.jsonl"
    with pytest.raises(LLMError, match=match) as info:
        llm_prompts_for_shard(items, str(out), cfg(llm, **kw), "bird", str(cache))
    message = str(info.value)
    assert "item 0001" in message and SECRET not in message and SECRET not in repr(info.value)
    assert not out.exists()
    assert not cache.exists() or cache_lines(cache) == []
    return message


@pytest.mark.parametrize("mode, retries, match, n_requests", [
    ("503", 1, r"answered HTTP 503 .*overloaded.*\(after 2 attempts\)", 2),
    ("400", 2, r"answered HTTP 400 .*bad request", 1),          # no retry on 4xx
    ("malformed", 2, r"answered malformed JSON: '\{\"choices\"", 1),
    ("no_choices", 2, r"answered JSON without choices\[0\]\.text", 1),
    ("empty", 2, r"answered an empty completion", 1),
    ("quotes", 2, r"empty answer", 1),                        # nothing left after clean_answer
])
def test_endpoint_errors(llm, tmp_path, mode, retries, match, n_requests):
    llm.reset(mode=mode)
    message = _fails(llm, tmp_path, match, retries=retries)
    assert f"{llm.base_url}/completions" in message
    assert len(llm.requests) == n_requests
    if mode == "503":  # the body is cut to 200 characters
        assert message.count("overloaded") < 20


def test_timeout(llm, tmp_path):
    llm.reset(mode="slow")
    start = time.monotonic()
    message = _fails(llm, tmp_path, r"request to http://127\.0\.0\.1:\d+/v1/completions timed out after 0\.2 s",
                     timeout=0.2, retries=1)
    assert time.monotonic() - start < 1.5 and len(llm.requests) == 2


def test_connection_refused(llm, tmp_path):
    port = unused_port()
    url = f"http://127.0.0.1:{port}/v1"
    message = _fails(llm, tmp_path, "could not connect to", base_url=url, retries=1)
    assert f"could not connect to {url}/completions: Connection refused" in message


def test_mid_shard_failure_keeps_answers(llm, tmp_path):
    llm.reset(fail_for=["Painted Bunting"])
    items = write_items(tmp_path / "s.csv")
    out, cache = tmp_path / "p.csv", tmp_path / "c.jsonl"
    with pytest.raises(LLMError) as info:
        llm_prompts_for_shard(items, str(out), cfg(llm, retries=1), "bird", str(cache))
    message = str(info.value)
    assert "item 0003" in message and f"{llm.base_url}/completions" in message
    assert "HTTP 500" in message and "5 answer(s) obtained" in message
    assert not out.exists()
    assert sorted(x["item_id"] for x in cache_lines(cache)) == ["0001", "0002", "0004", "0005", "0006"]

    # the server recovers: only the failed item is asked again
    llm.reset()
    frame = llm_prompts_for_shard(items, str(out), cfg(llm), "bird", str(cache))
    assert [r["body"]["prompt"] for r in llm.requests] == [frame["request"][2]]
    assert out.exists() and len(frame) == len(ITEMS)


def test_unreachable_server_stops_at_once(llm, tmp_path):
    items = write_items(tmp_path / "s.csv")
    client_cfg = cfg(llm, base_url=f"http://127.0.0.1:{unused_port()}/v1", retries=0, concurrency=1)
    with pytest.raises(LLMError, match="could not connect") as info:
        llm_prompts_for_shard(items, str(tmp_path / "p.csv"), client_cfg, "bird", str(tmp_path / "c.jsonl"))
    assert "item(s) not sent" in str(info.value)


def test_concurrency_is_bounded(llm, tmp_path):
    llm.reset(delay=0.05)
    items = write_items(tmp_path / "s.csv", [(f"{i:04d}", f"Bird {i}", []) for i in range(10)])
    seen = []
    client = OpenAICompatibleClient(llm.base_url, "m", concurrency=2, retries=0)
    answers = client.complete_many({f"{i}": f"request {i}" for i in range(10)},
                                   lambda item_id, answer: seen.append(item_id))
    assert len(answers) == 10 and sorted(seen) == sorted(answers)
    assert 1 < llm.max_in_flight <= 2
    llm.reset(delay=0.05)
    llm_prompts_for_shard(items, str(tmp_path / "p.csv"), cfg(llm, concurrency=3), "bird",
                          str(tmp_path / "c.jsonl"))
    assert len(llm.requests) == 10 and 1 < llm.max_in_flight <= 3


def test_truncated_cache_line_is_tolerated(llm, tmp_path):
    items = write_items(tmp_path / "s.csv", ITEMS[:3])
    out, cache = tmp_path / "p.csv", tmp_path / "c.jsonl"
    llm_prompts_for_shard(items, str(out), cfg(llm), "bird", str(cache))
    # a job killed while writing the third line
    text = cache.read_text(encoding="utf-8")
    cache.write_text(text[: len(text) - 20], encoding="utf-8")
    llm.reset()
    frame = llm_prompts_for_shard(items, str(out), cfg(llm), "bird", str(cache))
    assert len(llm.requests) == 1 and len(frame) == 3
    assert len(cache.read_text(encoding="utf-8").splitlines()) == 4  # 2 good, 1 torn, 1 new
    llm.reset()
    llm_prompts_for_shard(items, str(out), cfg(llm), "bird", str(cache))
    assert llm.requests == []


def test_bad_config_is_reported(llm, tmp_path):
    items = write_items(tmp_path / "s.csv", ITEMS[:1])
    for bad, match in [({"backend": "gpt"}, "backend must be"), ({"api": "edits"}, "api must be"),
                       ({"temprature": 0.5}, "unknown key"), ({"base_url": "localhost:8080"}, "http://")]:
        with pytest.raises(CtrlbenchError, match=match):
            llm_prompts_for_shard(items, str(tmp_path / "p.csv"), cfg(llm, **bad), "bird",
                                  str(tmp_path / "c.jsonl"))


# --- the local backend: the tiny causal LM --------------------------------------------------

@pytest.fixture(scope="module")
def tiny_lm_config(tmp_path_factory):
    from ctrlbench.models.tiny import build_tiny

    results = tmp_path_factory.mktemp("results")
    build_tiny("causal_lm", results / "models" / "tiny" / "llm", seed=0)
    return {"results_dir": str(results), "hub_offline": True, "device": "cpu", "dtype": "float32",
            "models": {"llm": {"kind": "causal_lm", "source": "tiny"}}}


def test_tiny_tokenizer_reloads(tiny_lm_config):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder = os.path.join(tiny_lm_config["results_dir"], "models", "tiny", "llm")
    tok = AutoTokenizer.from_pretrained(folder)
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert 1000 <= len(tok) <= 2000
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<pad>", "<s>", "</s>")
    ids = tok(PAPER_REQUEST).input_ids
    assert ids[0] == tok.bos_token_id and len(ids) < len(PAPER_REQUEST) / 2  # merges learned
    assert tok.decode(ids, skip_special_tokens=True) == PAPER_REQUEST
    assert tok.decode(tok("naïve café 😀").input_ids, skip_special_tokens=True) == "naïve café 😀"
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True)
    assert chat == "<s>[INST] hi [/INST]"
    from transformers import AutoConfig
    assert AutoConfig.from_pretrained(folder).vocab_size == len(tok)


def test_tiny_lm_generates_deterministically(tiny_lm_config, tmp_path):
    from ctrlbench.models.llm import LocalLM
    from ctrlbench.models.loaders import load_model

    lm = load_model(tiny_lm_config, "llm")
    assert isinstance(lm, LocalLM)
    texts = [PAPER_REQUEST, "Describe the flower(rose)."]
    greedy = lm.generate(texts, max_new_tokens=8, temperature=0.0, seed=0)
    assert len(greedy) == 2 and all(t.strip() for t in greedy)
    assert lm.generate(texts, max_new_tokens=8, temperature=0.0, seed=0) == greedy
    sampled = lm.generate(texts, max_new_tokens=8, temperature=1.0, seed=3, chat=True)
    assert lm.generate(texts, max_new_tokens=8, temperature=1.0, seed=3, chat=True) == sampled
    assert all(t.strip() for t in sampled)

    # the same model as the local backend of the prompts job
    items = write_items(tmp_path / "s.csv", ITEMS[:3])
    out, cache = tmp_path / "p.csv", tmp_path / "c.jsonl"
    prompt_cfg = {"kind": "llm", "backend": "local", "model": "llm", "max_tokens": 8,
                  "batch_size": 2, "api": "completions"}
    frame = llm_prompts_for_shard(items, str(out), prompt_cfg, "bird", str(cache), tiny_lm_config)
    written = pd.read_csv(out, dtype={"item_id": str}, keep_default_na=False)
    assert written["prompt"].str.strip().str.len().gt(0).all() and len(written) == 3
    assert written["request"][0] == PAPER_REQUEST
    assert frame["prompt"][0] == clean_answer(greedy[0])  # batching does not change the answer
    lines = cache_lines(cache)
    assert len(lines) == 3 and lines[0]["backend"] == "local"


def test_tiny_lm_build_is_deterministic(tiny_lm_config, tmp_path):
    from safetensors.torch import load_file

    from ctrlbench.models.tiny import build_tiny

    folder = os.path.join(tiny_lm_config["results_dir"], "models", "tiny", "llm")
    again = build_tiny("causal_lm", tmp_path / "again", seed=0)
    first, second = load_file(f"{folder}/model.safetensors"), load_file(f"{again}/model.safetensors")
    assert first.keys() == second.keys() and all((first[k] == second[k]).all() for k in first)
    with open(f"{folder}/tokenizer.json") as a, open(f"{again}/tokenizer.json") as b:
        assert a.read() == b.read()


def test_missing_real_model_says_how_to_get_it(tmp_path):
    from ctrlbench.models.loaders import load_model

    config = {"results_dir": str(tmp_path), "hub_offline": True,
              "models": {"llm": {"kind": "causal_lm", "source": "no-such-org/llama-nope-7b"}}}
    with pytest.raises(ModelNotFoundError, match="hf download no-such-org/llama-nope-7b"):
        load_model(config, "llm")
