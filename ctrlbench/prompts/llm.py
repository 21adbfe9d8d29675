"""LLM prompts (mmm2025): ask an LLM to describe each test image's class and attributes.

The paper asks Llama-2 (through a web-UI server) per test image:
`Please use less than 120 words to describe the bird({class}) with the following words:
{a1}, ..., {aN}.` and uses the answer, stripped of whitespace and quotes, as the prompt.
Here the request is a template with {domain}, {class} and {attributes} (attributes
formatted as the template prompts format them), sent either to any server that speaks
the OpenAI wire format (llama.cpp server, vLLM, Ollama, ...; backend "openai") or to a
transformers causal LM loaded in the job (backend "local").

Answers are cached in a JSONL file keyed by item id, sha1 of the request, backend and
model, appended (and fsynced) as each arrives: a rerun never re-queries, and a failure
half-way keeps the answers already obtained. See docs/prompts.md.
"""

from __future__ import annotations

import concurrent.futures as futures
import hashlib
import http.client
import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

import pandas as pd

from .. import io, shards
from ..errors import ConfigError, CtrlbenchError, InputError
from .templates import format_attribute

log = logging.getLogger(__name__)

LLM_REQUEST_TEMPLATE = ("Please use less than 120 words to describe the {domain}({class}) "
                        "with the following words: {attributes}.")

# Every prompt_cfg key with its default. "openai" uses base_url..api_key_env, "local"
# uses model and batch_size; api, max_tokens, temperature and seed apply to both.
LLM_PROMPT_DEFAULTS = {
    "kind": "llm",
    "backend": "openai",                 # openai | local
    "request_template": LLM_REQUEST_TEMPLATE,
    "max_attributes": 0,                 # 0 = every attribute of the item
    # openai: any server speaking the OpenAI wire format
    "base_url": "http://localhost:8080/v1",
    "endpoint_model": "meta-llama/Llama-2-7b-chat-hf",
    "timeout": 60.0,                     # seconds per request
    "retries": 3,                        # extra attempts on connection errors, timeouts, 429, 5xx
    "backoff": 1.0,                      # seconds before the first retry, doubled each time
    "concurrency": 4,                    # requests in flight at once
    "max_failures": 3,                   # failed items before the remaining ones are given up
    "api_key_env": "OPENAI_API_KEY",     # environment variable holding the key (if any)
    # local: a causal_lm entry of config["models"]
    "model": "llm",
    "batch_size": 8,
    # both
    "api": "chat",                       # chat (chat template / chat endpoint) | completions
    "max_tokens": 256,
    "temperature": 0.0,                  # 0 = greedy
    "seed": 0,                           # null = not sent / not seeded
}
BACKENDS = ("openai", "local")
APIS = ("completions", "chat")
OUTPUT_COLUMNS = ["item_id", "prompt", "class_name", "image", "request"]
_QUOTE_PAIRS = {'"': '"', "'": "'", "`": "`", "\u201c": "\u201d", "\u2018": "\u2019",
                "\u00ab": "\u00bb", "\u201e": "\u201c"}
_CLOSING = {close: open_ for open_, close in _QUOTE_PAIRS.items()}


class LLMError(CtrlbenchError):
    """An LLM endpoint or model gave no usable answer (the message names URL/model, item, problem)."""


# --- requests and answers -------------------------------------------------------------------

def build_request(template: str, class_name: str, attributes: list[str], domain: str,
                  max_attributes: int = 0) -> str:
    """The text sent to the LLM for one item.

    Attributes are formatted as the template prompts format them and truncated to
    `max_attributes` when > 0; without attributes the " with the following words:
    {attributes}" clause is dropped.
    """
    if max_attributes and max_attributes > 0:
        attributes = attributes[:max_attributes]
    text = ", ".join(format_attribute(a) for a in attributes)
    if not text:
        for clause in (" with the following words: {attributes}", " with the following words {attributes}",
                       ": {attributes}", " with {attributes}", ", {attributes}", " {attributes}"):
            if clause in template:
                template = template.replace(clause, "")
                break
    try:
        return template.format(**{"class": class_name, "domain": domain, "attributes": text})
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"request_template {template!r}: only {{domain}}, {{class}} and "
                          f"{{attributes}} may appear in braces ({exc!r})") from None


def clean_answer(text: str) -> str:
    """The prompt in an LLM answer: whitespace and surrounding quotes stripped.

    A quote pair around the whole answer is removed (repeatedly), and so is a lone
    opening or closing quote whose partner appears nowhere else (an answer cut off by
    max_tokens); quotes inside the text stay. Raises LLMError when nothing is left.
    """
    answer = (text or "").strip()
    while answer:
        first, last = answer[0], answer[-1]
        if len(answer) >= 2 and _QUOTE_PAIRS.get(first) == last:
            answer = answer[1:-1].strip()
        elif first in _QUOTE_PAIRS and _QUOTE_PAIRS[first] not in answer[1:]:
            answer = answer[1:].strip()
        elif last in _CLOSING and _CLOSING[last] not in answer[:-1]:
            answer = answer[:-1].strip()
        elif len(answer) == 1 and first in _CLOSING:
            answer = ""
        else:
            break
    if not answer:
        raise LLMError(f"empty answer {text!r} (nothing left after stripping whitespace and quotes)")
    return answer


def request_sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


# --- OpenAI-compatible HTTP client ----------------------------------------------------------

class _Failure(Exception):
    """One attempt failed; `retry` says whether trying again may help."""

    def __init__(self, problem: str, retry: bool, delay: float | None = None):
        super().__init__(problem)
        self.problem, self.retry, self.delay = problem, retry, delay


class _Unreachable(LLMError):
    """The server could not be connected to: every other request would fail the same way."""


class OpenAICompatibleClient:
    """A minimal client of the OpenAI completions / chat completions API (standard library only).

    POST {base_url}/completions {"model", "prompt", "max_tokens", "temperature"[, "seed"]}
    -> choices[0].text, or {base_url}/chat/completions with "messages" ->
    choices[0].message.content. base_url is e.g. http://localhost:8080/v1. Retries with
    exponential backoff (backoff * 2**attempt s) on connection errors, timeouts, HTTP 429
    and 5xx; never on other 4xx or on malformed answers. The API key, read from the
    environment variable `api_key_env` at each request, is sent only in the
    Authorization header and never appears in a message.
    """

    def __init__(self, base_url: str, model: str, api: str = "completions", timeout: float = 60.0,
                 retries: int = 3, backoff: float = 1.0, concurrency: int = 4, max_tokens: int = 256,
                 temperature: float = 0.0, seed: int | None = None,
                 api_key_env: str = "OPENAI_API_KEY", max_failures: int = 3):
        if api not in APIS:
            raise ConfigError(f"api must be one of {', '.join(APIS)}, got {api!r}")
        if not str(base_url).startswith(("http://", "https://")):
            raise ConfigError(f"base_url must start with http:// or https://, got {base_url!r}")
        if int(concurrency) < 1:
            raise ConfigError(f"concurrency must be >= 1, got {concurrency}")
        self.base_url = str(base_url).rstrip("/")
        self.model, self.api = model, api
        self.timeout, self.retries, self.backoff = float(timeout), int(retries), float(backoff)
        self.concurrency, self.max_tokens = int(concurrency), int(max_tokens)
        self.temperature, self.seed = float(temperature), seed
        self.api_key_env, self.max_failures = api_key_env, max(1, int(max_failures))
        # A server on this machine is reached directly even when http_proxy is set.
        host = urllib.parse.urlsplit(self.base_url).hostname or ""
        loopback = host in ("localhost", "::1") or host.startswith("127.")
        self._opener = urllib.request.build_opener(
            *([urllib.request.ProxyHandler({})] if loopback else []))

    def __repr__(self) -> str:  # no key in here, ever
        return (f"OpenAICompatibleClient(url={self.url!r}, model={self.model!r}, "
                f"concurrency={self.concurrency})")

    @property
    def url(self) -> str:
        return self.base_url + ("/chat/completions" if self.api == "chat" else "/completions")

    def payload(self, text: str) -> dict:
        body = {"model": self.model, "max_tokens": self.max_tokens, "temperature": self.temperature}
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": text}]
        else:
            body["prompt"] = text
        if self.seed is not None:
            body["seed"] = int(self.seed)
        return body

    def complete(self, text: str, item_id: str = "?") -> str:
        """The raw completion of one request (retried as described); raises LLMError."""
        attempts = self.retries + 1
        for attempt in range(attempts):
            try:
                return self._attempt(text)
            except _Failure as failure:
                last = failure
                if not failure.retry or attempt == attempts - 1:
                    break
                delay = self.backoff * 2 ** attempt
                if failure.delay is not None:  # Retry-After of a 429/503
                    delay = min(max(delay, failure.delay), 60.0)
                log.warning("item %s: %s; retrying in %.1f s", item_id, failure.problem, delay)
                time.sleep(delay)
        tries = f" (after {attempt + 1} attempts)" if attempt else ""
        error = _Unreachable if last.problem.startswith("could not connect") else LLMError
        raise error(f"LLM request for item {item_id} failed: {last.problem}{tries}")

    def _attempt(self, text: str) -> str:
        url = self.url
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env or "", "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(url, data=json.dumps(self.payload(text)).encode("utf-8"),
                                         headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            body = _body(exc)
            retry = exc.code == 429 or exc.code >= 500
            raise _Failure(f"{url} answered HTTP {exc.code} {exc.reason}: {body[:200]!r}", retry,
                           _retry_after(exc)) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise _Failure(f"request to {url} timed out after {self.timeout:g} s", True) from None
            why = getattr(reason, "strerror", None) or str(reason)
            raise _Failure(f"could not connect to {url}: {why}", True) from None
        except (TimeoutError, socket.timeout):
            raise _Failure(f"request to {url} timed out after {self.timeout:g} s", True) from None
        except (OSError, http.client.HTTPException) as exc:  # reset / closed mid-answer
            why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise _Failure(f"connection to {url} failed while reading the answer: {why}", True) from None
        return self._parse(url, raw.decode("utf-8", errors="replace"))

    def _parse(self, url: str, body: str) -> str:
        try:
            data = json.loads(body)
        except json.JSONDecodeError:
            raise _Failure(f"{url} answered malformed JSON: {body[:200]!r}", False) from None
        path = "choices[0].message.content" if self.api == "chat" else "choices[0].text"
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] if self.api == "chat" else choice["text"]
        except (KeyError, IndexError, TypeError):
            raise _Failure(f"{url} answered JSON without {path}: {body[:200]!r}", False) from None
        if not isinstance(text, str) or not text.strip():
            raise _Failure(f"{url} answered an empty completion ({path} = {text!r})", False)
        return text

    def complete_many(self, requests: dict, on_answer: Callable[[str, str], None] | None = None) -> dict:
        """Complete every request ({item_id: text}) with at most `concurrency` in flight.

        `on_answer(item_id, answer)` is called (in this thread) as each answer arrives,
        so the caller can save it at once. A failed item does not stop the others, but
        after `max_failures` failed items, or as soon as the server cannot be connected
        to, the requests not yet sent are dropped. Raises LLMError naming the first failed
        item (answers obtained before are passed to on_answer all the same); returns
        {item_id: answer} when every item succeeded.
        """
        answers, failures = {}, []
        if not requests:
            return answers
        # Set by the worker that finds the server unreachable, so that the workers stop
        # sending at once (cancelling futures from this thread can come too late: a
        # refused connection fails faster than this thread sees the failure).
        unreachable = threading.Event()

        def send(text: str, item_id: str):
            if unreachable.is_set():
                return _NOT_SENT
            try:
                return self.complete(text, item_id)
            except _Unreachable:
                unreachable.set()
                raise

        with futures.ThreadPoolExecutor(max_workers=self.concurrency,
                                        thread_name_prefix="llm-request") as pool:
            pending = {pool.submit(send, text, item_id): item_id
                       for item_id, text in requests.items()}
            try:
                for future in futures.as_completed(pending):
                    if future.cancelled():
                        continue
                    item_id = pending[future]
                    try:
                        answer = future.result()
                        if answer is _NOT_SENT:
                            continue
                        if on_answer is not None:
                            on_answer(item_id, answer)  # may reject the answer with LLMError
                        answers[item_id] = answer
                    except LLMError as exc:
                        failures.append(exc)
                        if isinstance(exc, _Unreachable) or len(failures) >= self.max_failures:
                            for other in pending:
                                other.cancel()
            except BaseException:
                for other in pending:
                    other.cancel()
                raise
        if failures:
            left = len(requests) - len(answers) - len(failures)
            more = f"; {len(failures) - 1} more item(s) failed" if len(failures) > 1 else ""
            more += f"; {left} item(s) not sent" if left else ""
            raise LLMError(f"{failures[0]}{more}; {len(answers)} answer(s) obtained "
                           f"(rerun to retry the rest)")
        return answers


_NOT_SENT = object()  # a request dropped after the server was found unreachable


def _body(exc: urllib.error.HTTPError) -> str:
    try:
        return exc.read().decode("utf-8", errors="replace")
    except Exception:  # noqa: BLE001 - the body is only for the message
        return ""


def _retry_after(exc: urllib.error.HTTPError) -> float | None:
    try:
        return float(exc.headers.get("Retry-After"))
    except (TypeError, ValueError, AttributeError):
        return None


# --- answer cache -------------------------------------------------------------------------

class AnswerCache:
    """Answers in a JSONL file, one {item_id, request_sha1, answer, backend, model} a line.

    Lines are appended with one write each, flushed and fsynced, so a killed job loses
    at most the line it was writing; unreadable lines (a truncated last line) are
    skipped. An answer matches a request by (item_id, request_sha1, backend, model).
    """

    def __init__(self, path: str | os.PathLike, backend: str, model: str):
        self.path, self.backend, self.model = Path(path), backend, str(model)
        self.answers: dict[tuple[str, str], str] = {}
        self._read()

    def _read(self) -> None:
        if not self.path.is_file():
            return
        bad = 0
        with open(self.path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    key = (str(rec["item_id"]), rec["request_sha1"])
                    if rec["backend"] == self.backend and str(rec["model"]) == self.model:
                        self.answers[key] = rec["answer"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    bad += 1
        if bad:
            log.warning("%s: skipped %d unreadable line(s) (a job killed while writing?)", self.path, bad)

    def get(self, item_id: str, sha1: str) -> str | None:
        return self.answers.get((str(item_id), sha1))

    def append(self, item_id: str, sha1: str, answer: str) -> None:
        line = json.dumps({"item_id": str(item_id), "request_sha1": sha1, "answer": answer,
                           "backend": self.backend, "model": self.model}, ensure_ascii=False) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if _ends_without_newline(fd):  # a truncated line from a killed job: close it
                line = "\n" + line
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        self.answers[(str(item_id), sha1)] = answer


def _ends_without_newline(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


# --- prompts for a shard ------------------------------------------------------------------

def llm_settings(prompt_cfg: dict) -> dict:
    """prompt_cfg over LLM_PROMPT_DEFAULTS, checked."""
    unknown = sorted(set(prompt_cfg) - set(LLM_PROMPT_DEFAULTS))
    if unknown:
        raise ConfigError(f"LLM prompts: unknown key(s) {', '.join(unknown)} "
                          f"(keys: {', '.join(LLM_PROMPT_DEFAULTS)})")
    cfg = {**LLM_PROMPT_DEFAULTS, **prompt_cfg}
    if cfg["kind"] != "llm":
        raise ConfigError(f"LLM prompts: kind must be 'llm', got {cfg['kind']!r}")
    if cfg["backend"] not in BACKENDS:
        raise ConfigError(f"LLM prompts: backend must be one of {', '.join(BACKENDS)}, got {cfg['backend']!r}")
    if cfg["api"] not in APIS:
        raise ConfigError(f"LLM prompts: api must be one of {', '.join(APIS)}, got {cfg['api']!r}")
    if "{class}" not in cfg["request_template"]:
        raise ConfigError(f"LLM prompts: request_template must contain {{class}}: {cfg['request_template']!r}")
    return cfg


def llm_prompts_for_shard(items_csv: str, out_csv: str, prompt_cfg: dict, domain: str,
                          cache_path: str, config: dict | None = None) -> pd.DataFrame:
    """Ask the configured LLM for a prompt per item of a shard; write
    item_id, prompt, class_name, image, request to `out_csv` (atomically).

    Only requests missing from the cache at `cache_path` are sent; each answer is
    appended to the cache as it arrives. On any failure the answers obtained so far stay
    in the cache, LLMError is raised and no CSV is written. `config` (the workflow
    config) is needed by the local backend, for its models, device and dtype.
    """
    cfg = llm_settings(prompt_cfg)
    items = shards.read_shard(items_csv)
    requests = {}
    for item in items.itertuples(index=False):
        if not str(item.class_name).strip():
            raise InputError(f"item {item.item_id}: empty class name, cannot build an LLM request")
        try:
            attributes = json.loads(item.attributes or "[]")
        except json.JSONDecodeError as exc:
            raise InputError(f"item {item.item_id}: attributes are not a JSON list: {exc}") from None
        requests[str(item.item_id)] = build_request(cfg["request_template"], str(item.class_name),
                                                    attributes, domain, int(cfg["max_attributes"]))
    sha = {item_id: request_sha1(text) for item_id, text in requests.items()}

    if cfg["backend"] == "openai":
        model_name = cfg["endpoint_model"]
    else:
        if config is None:
            raise ConfigError("LLM prompts: backend 'local' needs the workflow config (models, device)")
        from ..models.registry import model_entry
        model_name = model_entry(config, cfg["model"])["source"]
        model_name = f"{cfg['model']}:{model_name}"
    cache = AnswerCache(cache_path, cfg["backend"], model_name)
    todo = {i: text for i, text in requests.items() if cache.get(i, sha[i]) is None}
    log.info("LLM prompts %s: %d items, %d cached, %d to ask", items_csv, len(requests),
             len(requests) - len(todo), len(todo))

    if todo:
        if cfg["backend"] == "openai":
            _ask_endpoint(cfg, todo, sha, cache)
        else:
            _ask_local(cfg, config, todo, sha, cache)

    rows = [{"item_id": item.item_id, "prompt": clean_answer(cache.get(str(item.item_id), sha[str(item.item_id)])),
             "class_name": item.class_name, "image": item.image, "request": requests[str(item.item_id)]}
            for item in items.itertuples(index=False)]
    frame = pd.DataFrame(rows, columns=OUTPUT_COLUMNS)
    io.write_csv(out_csv, frame)
    return frame


def _ask_endpoint(cfg: dict, todo: dict, sha: dict, cache: AnswerCache) -> None:
    client = OpenAICompatibleClient(
        cfg["base_url"], cfg["endpoint_model"], api=cfg["api"], timeout=cfg["timeout"],
        retries=cfg["retries"], backoff=cfg["backoff"], concurrency=cfg["concurrency"],
        max_tokens=cfg["max_tokens"], temperature=cfg["temperature"], seed=cfg["seed"],
        api_key_env=cfg["api_key_env"], max_failures=cfg["max_failures"])

    def on_answer(item_id: str, answer: str) -> None:
        try:
            clean_answer(answer)
        except LLMError as exc:
            raise LLMError(f"LLM request for item {item_id} to {client.url}: {exc}") from None
        cache.append(item_id, sha[item_id], answer)

    client.complete_many(todo, on_answer)


def _ask_local(cfg: dict, config: dict, todo: dict, sha: dict, cache: AnswerCache) -> None:
    from ..config import resolve_device, resolve_dtype
    from ..models.loaders import load_model

    device = resolve_device(config)
    lm = load_model(config, cfg["model"], device, resolve_dtype(config, device))
    ids = list(todo)
    size = max(1, int(cfg["batch_size"]))
    for start in range(0, len(ids), size):
        batch = ids[start:start + size]
        answers = lm.generate([todo[i] for i in batch], max_new_tokens=cfg["max_tokens"],
                              temperature=cfg["temperature"], seed=cfg["seed"], chat=cfg["api"] == "chat")
        for item_id, answer in zip(batch, answers):
            try:
                clean_answer(answer)
            except LLMError as exc:
                raise LLMError(f"model '{cfg['model']}', item {item_id}: {exc}") from None
            cache.append(item_id, sha[item_id], answer)
