"""`gptkit serve` against the official `openai` client: completions and chat completions, streamed
and not, equal to `gptkit generate`'s greedy tokens; concurrent requests decoded in one batch with
rows joining mid-flight; OpenAI-shaped 4xx errors after which the server goes on serving."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import gptkit
import gptkit.errors
from gptkit.checkpoint import save_model
from gptkit.config import Component
from gptkit.conversation import fit_conversation, render
from gptkit.interfaces import Context
from gptkit.model import GPT, GPTConfig
from gptkit.plugins import registry
from tinymodel import one_thread  # noqa: F401 (autouse fixture)

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
from gptkit import serve  # noqa: E402  (after the skips: it needs the serve extra to serve)

PROMPTS = ["Every effort moves you", "The capital of France is", "Once upon a time", "1, 2, 3,", "Hello"]
CONTEXT = 128


def tiny_gpt2(seed: int = 0) -> GPT:
    """A random GPT over GPT-2's vocabulary, weights large enough that greedy choices are not near-ties."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=50257, context_length=CONTEXT, emb_dim=64, n_heads=4, n_layers=2, qkv_bias=True))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    from conftest import gpt2_vocab_dir
    from gptkit_plugins.tokenizers import gpt2_from_files

    vocabulary = gpt2_vocab_dir()
    if vocabulary is None:
        pytest.skip("GPT-2 vocabulary files not found in ../shared/data/gpt2")
    return save_model(tmp_path_factory.mktemp("serve") / "tiny-chat", tiny_gpt2(), gpt2_from_files(vocabulary), prompt=Component("alpaca"))


@pytest.fixture(scope="module")
def server(model_folder):
    torch.set_num_threads(1)
    service = serve.build_service(str(model_folder), max_batch=4, model_id="tiny")
    with serve.serving_in_thread(service) as url:
        yield url, service


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def generated(model_folder):
    """`gptkit generate --json`'s greedy completions of PROMPTS (16 new tokens), by prompt."""
    args = [arg for prompt in PROMPTS for arg in ("--prompt", prompt)]
    result = subprocess.run([sys.executable, "-m", "gptkit", "generate", str(model_folder), *args, "--max-new-tokens", "16", "--json", "--threads", "1"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return {row["prompt"]: row for row in map(json.loads, result.stdout.splitlines())}


def test_greedy_completions_equal_gptkit_generate(client, generated):
    for prompt in PROMPTS:
        response = client.completions.create(model="tiny", prompt=prompt, max_tokens=16, temperature=0)
        reference = generated[prompt]
        assert response.choices[0].text == reference["text"]
        assert response.usage.completion_tokens == reference["new_tokens"]
        assert response.usage.prompt_tokens == len(reference["token_ids"]) - reference["new_tokens"]
        assert response.usage.total_tokens == len(reference["token_ids"])
        assert response.choices[0].finish_reason == ("length" if reference["new_tokens"] == 16 else "stop")
        assert response.object == "text_completion" and response.model == "tiny"


def test_concurrent_greedy_completions_each_equal_their_own(client, generated):
    with ThreadPoolExecutor(len(PROMPTS) * 2) as pool:
        responses = list(pool.map(lambda p: client.completions.create(model="tiny", prompt=p, max_tokens=16, temperature=0), PROMPTS * 2))
    assert [r.choices[0].text for r in responses] == [generated[p]["text"] for p in PROMPTS * 2]


def test_streamed_completion_is_the_same_text_in_pieces(client, generated):
    prompt = PROMPTS[0]
    chunks = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=16, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == generated[prompt]["text"]
    assert len([c for c in chunks if c.choices and c.choices[0].text]) >= 8  # the text came in pieces
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16


def test_chat_renders_the_conversation_in_the_models_prompt_format(client, model_folder, server):
    model, tokenizer = gptkit.load_model(model_folder)
    alpaca = registry.prompt.build(Component("alpaca"), Context())
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a colour."},
                {"role": "assistant", "content": "Blue."}, {"role": "user", "content": [{"type": "text", "text": "Another one?"}]}]
    prompt = render(alpaca, [("Name a colour.", "Blue.")], "Another one?", system="Answer briefly.")
    expected = gptkit.generate(model, tokenizer, prompt, max_new_tokens=12)
    response = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].message.content == expected
    assert response.usage.prompt_tokens == len(tokenizer.encode(prompt))
    chunks = list(client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == response.choices[0].finish_reason
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_streams_are_server_sent_events_ending_with_done(server):
    import httpx

    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "temperature": 0, "stream": True}
    with httpx.stream("POST", server[0] + "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length") and chunks[-1]["choices"][0]["delta"] == {}


def test_chat_drops_the_oldest_turns_that_do_not_fit(client, model_folder):
    _, tokenizer = gptkit.load_model(model_folder)
    alpaca = registry.prompt.build(Component("alpaca"), Context())
    turns = [(f"Question number {i}, a rather long one with many words in it?", f"Answer {i}, also long enough to count.") for i in range(6)]
    messages = [m for q, a in turns for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    messages.append({"role": "user", "content": "Last?"})
    ids, dropped = fit_conversation(alpaca, tokenizer, turns, "Last?", context_length=CONTEXT, room=8)
    assert 0 < dropped < 6
    response = client.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
    assert response.usage.prompt_tokens == len(ids) <= CONTEXT - 8


def test_stop_strings_cut_the_text_streamed_or_not(client, generated):
    prompt = PROMPTS[1]
    text = generated[prompt]["text"]
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    cut = text[: text.index(stop)]
    response = client.completions.create(model="tiny", prompt=prompt, max_tokens=16, temperature=0, stop=[stop, "never appears"])
    assert (response.choices[0].text, response.choices[0].finish_reason) == (cut, "stop")
    assert response.usage.completion_tokens < 16
    streamed = client.completions.create(model="tiny", prompt=prompt, max_tokens=16, temperature=0, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut


def test_seeded_sampling_is_repeatable_and_equals_gptkit_generate(client, model_folder):
    model, tokenizer = gptkit.load_model(model_folder)
    kwargs = dict(model="tiny", prompt=PROMPTS[2], max_tokens=12, temperature=1.0, top_p=0.9, seed=5)
    first = client.completions.create(**kwargs).choices[0].text
    assert client.completions.create(**kwargs).choices[0].text == first
    assert first == gptkit.generate(model, tokenizer, PROMPTS[2], max_new_tokens=12, temperature=1.0, top_p=0.9, seed=5)
    assert client.completions.create(**{**kwargs, "seed": 6}).choices[0].text != first


def test_models_and_health(client, server):
    import httpx

    assert [m.id for m in client.models.list()] == ["tiny"]
    assert client.models.retrieve("tiny").owned_by == "gptkit"
    assert httpx.get(server[0] + "/health").json() == {"status": "ok"}


@pytest.mark.parametrize(
    "kwargs, error, param, code",
    [
        (dict(model="nope"), openai.NotFoundError, "model", "model_not_found"),
        (dict(prompt="word " * 200), openai.BadRequestError, "prompt", "context_length_exceeded"),
        (dict(prompt="Hello there, you", max_tokens=126), openai.BadRequestError, "prompt", "context_length_exceeded"),
        (dict(max_tokens=0), openai.BadRequestError, "max_tokens", "invalid_value"),
        (dict(max_tokens=CONTEXT), openai.BadRequestError, "max_tokens", "invalid_value"),
        (dict(n=2), openai.BadRequestError, "n", "unsupported_parameter"),
        (dict(logprobs=2), openai.BadRequestError, "logprobs", "unsupported_parameter"),
        (dict(echo=True), openai.BadRequestError, "echo", "unsupported_parameter"),
        (dict(temperature=3), openai.BadRequestError, "temperature", "invalid_value"),
        (dict(extra_body={"temperature": "hot"}), openai.BadRequestError, "temperature", "invalid_type"),
        (dict(extra_body={"max_tokens": 1.5}), openai.BadRequestError, "max_tokens", "invalid_type"),
        (dict(extra_body={"colour": "blue"}), openai.BadRequestError, "colour", None),
        (dict(stop=["a", "b", "c", "d", "e"]), openai.BadRequestError, "stop", "invalid_value"),
        (dict(prompt=["one", "two"]), openai.BadRequestError, "prompt", "unsupported_parameter"),
        (dict(prompt=[50257]), openai.BadRequestError, "prompt", "invalid_value"),
    ],
)
def test_bad_completion_requests_get_openai_errors_and_the_server_goes_on(client, kwargs, error, param, code):
    request = dict(model="tiny", prompt="Hello", max_tokens=4, temperature=0)
    with pytest.raises(error) as caught:
        client.completions.create(**{**request, **kwargs})
    body = caught.value.body
    assert set(body) == {"message", "type", "param", "code"}
    assert (body["type"], body["param"], body["code"]) == ("invalid_request_error", param, code)
    assert body["message"]
    assert client.completions.create(**request).usage.completion_tokens == 4  # still serving


@pytest.mark.parametrize(
    "messages, param",
    [
        ([], "messages"),
        ([{"role": "assistant", "content": "Hi"}], "messages[0]"),
        ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yes"}], "messages"),
        ([{"role": "user", "content": "Hi"}, {"role": "system", "content": "Be kind"}, {"role": "user", "content": "Hi"}], "messages[1]"),
        ([{"role": "tool", "content": "42"}], "messages[0].role"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "messages[0].content"),
    ],
)
def test_bad_chat_messages_get_openai_errors(client, messages, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="tiny", messages=messages, max_tokens=4)
    assert caught.value.body["param"] == param


def test_malformed_bodies_get_a_400_in_openais_shape(server):
    import httpx

    url = server[0]
    for body in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        response = httpx.post(url + "/v1/completions", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    unknown = httpx.get(url + "/v1/nothing")
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "invalid_request_error"
    assert httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 2}).status_code == 200


def test_chat_needs_a_prompt_format(tmp_path):
    from gptkit.model import GPT

    folder = save_model(tmp_path / "base", GPT(GPTConfig(vocab_size=257, context_length=32, emb_dim=16, n_heads=2, n_layers=1)),
                        registry.tokenizer.build(Component("bytes"), Context()))
    service = serve.build_service(str(folder), max_batch=2, model_id="base")
    with pytest.raises(serve.APIError, match="--prompt-format") as caught:
        service.chat_job({"model": "base", "messages": [{"role": "user", "content": "Hi"}]}, print)
    assert caught.value.status == 400
    named = serve.build_service(str(folder), max_batch=2, model_id="base", format_name="compact")
    job = named.chat_job({"model": "base", "messages": [{"role": "user", "content": "Hi"}]}, print)
    assert bytes(job.prompt_ids).decode() == "Hi\n=" and job.max_tokens == 32 - 4  # the rest of the context


@pytest.fixture
def recording_server(model_folder, monkeypatch):
    """A server of --max-batch 3 whose engine records each step's rows and each join's (rows already
    decoding, rows joining), each step taking at least 10 ms."""
    steps, joins = [], []

    class Recording(serve.DecodingRows):
        def add(self, prompts):
            joins.append((len(self), len(prompts)))
            return super().add(prompts)

        def step(self, tokens):
            steps.append(len(tokens))
            time.sleep(0.01)  # a model of some size: 120 steps outlast a client's leaving
            return super().step(tokens)

    monkeypatch.setattr(serve, "DecodingRows", Recording)
    service = serve.build_service(str(model_folder), max_batch=3, model_id="tiny")
    with serve.serving_in_thread(service) as url:
        yield openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0), steps, joins


def test_concurrent_requests_share_decoding_steps_and_join_mid_flight(recording_server, generated):
    """Requests arriving while others decode join the running batch at a step boundary."""
    client, steps, joins = recording_server
    first = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=40, temperature=0, stream=True)
    pieces = [next(first).choices[0].text]  # the first request is decoding...
    with ThreadPoolExecutor(4) as pool:  # ...when four more arrive: two join it, two wait for room
        rest = pool.map(lambda p: client.completions.create(model="tiny", prompt=p, max_tokens=16, temperature=0), PROMPTS[1:])
        pieces += [c.choices[0].text for c in first]
        texts = [r.choices[0].text for r in rest]
    assert texts == [generated[p]["text"] for p in PROMPTS[1:]]
    assert "".join(pieces).startswith(generated[PROMPTS[0]]["text"])
    assert max(steps) == 3  # never more than --max-batch rows
    assert any(active > 0 for active, _ in joins)  # rows joined a batch already decoding


def test_a_client_that_leaves_mid_stream_frees_its_row(recording_server):
    client, steps, _ = recording_server
    stream = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=120, temperature=0, stream=True)
    next(stream)
    stream.close()
    time.sleep(0.5)
    assert client.completions.create(model="tiny", prompt="Hi", max_tokens=3, temperature=0).usage.completion_tokens == 3
    assert len(steps) < 60  # the abandoned request did not decode its 120 tokens
    assert steps[-1] == 1  # the last request decoded alone


def test_an_attention_without_the_kv_cache_cannot_be_served():
    from gptkit_plugins.attention import CausalSelfAttention, sdpa_kernel

    class NoCache(CausalSelfAttention):
        supports_kv_cache = False

    registry.attention.register("test.nocache", lambda config: NoCache(config, sdpa_kernel), doc="test")
    try:
        model = GPT(GPTConfig(vocab_size=257, context_length=32, emb_dim=16, n_heads=2, n_layers=1, attention=Component("test.nocache")))
        with pytest.raises(gptkit.errors.GptkitError, match="the attention 'test.nocache' does not support"):
            serve.Engine(model, max_batch=2)
    finally:
        registry.attention.unregister("test.nocache")


def test_job_stops_at_end_of_text_and_holds_back_a_possible_stop_string():
    tokenizer = registry.tokenizer.build(Component("bytes"), Context())
    events = []
    job = serve.Job([1], max_tokens=10, sampler=None, generator=None, stop=["END"], tokenizer=tokenizer, emit=events.append)
    assert not job.feed(ord("a")) and not job.feed(ord("E")) and not job.feed(ord("N"))
    assert events == [("text", "a")]  # "EN" may begin "END": held back
    assert not job.feed(ord("x"))
    assert events[-1] == ("text", "ENx")
    assert job.feed(tokenizer.eos_id)
    assert events[-1] == ("done", "stop") and job.new_ids == [97, 69, 78, 120]
    assert serve.held_back("abcEN", ["END", "NO"]) == 2 and serve.held_back("abc", ["END"]) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gptkit_serve_command_listens_on_localhost(model_folder, generated):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "gptkit", "serve", str(model_folder), "--port", str(port), "--threads", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        deadline = time.monotonic() + 120
        while True:
            try:
                models = client.models.list()
                break
            except openai.APIConnectionError:
                assert process.poll() is None and time.monotonic() < deadline, process.stdout.read() if process.poll() is not None else "timeout"
                time.sleep(0.2)
        assert [m.id for m in models] == [str(model_folder)]  # SOURCE as given is the model id
        response = client.completions.create(model=str(model_folder), prompt=PROMPTS[3], max_tokens=16, temperature=0)
        assert response.choices[0].text == generated[PROMPTS[3]]["text"]
    finally:
        process.terminate()
        output = process.communicate(timeout=60)[0]
    assert f"Uvicorn running on http://127.0.0.1:{port}" in output


def test_without_the_serve_extra_the_command_says_which_to_install(model_folder, monkeypatch):
    from click.testing import CliRunner

    from gptkit.cli import cli

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now fails
    result = CliRunner().invoke(cli, ["serve", str(model_folder)])
    assert result.exit_code == 2
    assert "error: gptkit serve needs the serve extra (FastAPI and uvicorn): pip install 'gptkit[serve]'" in result.stderr
