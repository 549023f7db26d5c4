"""`gptkit serve`: any gptkit model behind OpenAI's HTTP API, with continuous batching.

Endpoints: POST /v1/completions and /v1/chat/completions (streamed as server-sent events with
`"stream": true`, ending with `data: [DONE]`), GET /v1/models and /health. The chat endpoint writes
its messages as a conversation in the model's prompt format (gptkit.conversation): system messages
first, as plain text followed by a blank line (gptkit's prompt formats have no system part), then
the user/assistant turns, the oldest dropped when they would not fit the context with `max_tokens`.

One background thread, the `Engine`, owns the model. Requests wait in a queue; between two decoding
steps the engine admits the waiting ones (prefilled together) and drops those that have finished,
so every step decodes all the requests in flight as one batch (gptkit.generation.DecodingRows).
A request's text is decoded, checked for its stop strings and sent back as its tokens come.

Requests are checked the way OpenAI checks them: a bad one is answered with a 4xx and an OpenAI error
body ({"error": {"message", "type", "param", "code"}}) and the server goes on. `n` must be 1;
`logprobs`, `echo`, `suffix`, `best_of` > 1, penalties and `logit_bias` are refused with a clear
error rather than ignored. FastAPI and uvicorn (the `serve` extra) are imported only here, when serving.
"""


import asyncio
import contextlib
import json
import logging
import queue
import threading
import time
import uuid
from collections import defaultdict
from typing import Any, AsyncIterator, Callable, Iterator

import torch

from gptkit.config import Component
from gptkit.conversation import fit_conversation
from gptkit.errors import GptkitError
from gptkit.generation import DecodingRows, TextDecoder, build_sampler, make_generator, packed_linears, supports_kv_cache
from gptkit.interfaces import Context, PromptFormat, Tokenizer
from gptkit.plugins import registry
from gptkit.sources import load_model_and_prompt
from gptkit.weights import check_vocab

log = logging.getLogger(__name__)

SERVE_EXTRA = "gptkit serve needs the serve extra (FastAPI and uvicorn): pip install 'gptkit[serve]'"


# --- errors -----------------------------------------------------------------------------------


class APIError(Exception):
    """A request the server answers with an OpenAI error body and an HTTP status."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None, status: int = 400,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.type = message, param, code, status, type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# --- one request in the engine --------------------------------------------------------------------


class Job:
    """One request as the engine runs it: its prompt's ids, how to pick its tokens, when to stop.

    `emit` receives ("text", piece) as the text grows (a piece that could begin a stop string is held
    back until it is clear), then ("done", finish_reason) with finish_reason "stop" (end-of-text or
    a stop string, which is not part of the text) or "length" (`max_tokens` reached), or ("error",
    message). `new_ids` are the tokens generated (end-of-text excluded)."""

    def __init__(self, prompt_ids: list[int], *, max_tokens: int, sampler: Callable, generator: torch.Generator | None,
                 stop: list[str], tokenizer: Tokenizer, emit: Callable[[tuple], None]):
        self.prompt_ids, self.max_tokens, self.sampler, self.generator = prompt_ids, max_tokens, sampler, generator
        self.stop, self.eos_id, self.emit = stop, tokenizer.eos_id, emit
        self.decoder = TextDecoder(tokenizer)
        self.new_ids: list[int] = []
        self.text = ""
        self.sent = 0  # characters of `text` already emitted
        self.cancelled = False  # set by the server when the client goes away: the engine drops the job
        self.finish_reason: str | None = None  # set by the server from the "done" event

    def feed(self, token: int) -> bool:
        """Take the next token; True when the job has finished."""
        done = token == self.eos_id
        if not done:
            self.new_ids.append(token)
            self.text += self.decoder.add(token)
            done = len(self.new_ids) == self.max_tokens
        if done:
            self.text += self.decoder.flush()
        found = [i for s in self.stop if (i := self.text.find(s, self.sent)) >= 0]
        if found:
            self.text = self.text[: min(found)]
            self._send(len(self.text))
            self.emit(("done", "stop"))
            return True
        if done:
            self._send(len(self.text))
            self.emit(("done", "stop" if token == self.eos_id else "length"))
            return True
        self._send(len(self.text) - held_back(self.text, self.stop))
        return False

    def _send(self, end: int) -> None:
        if end > self.sent:
            self.emit(("text", self.text[self.sent : end]))
            self.sent = end


def held_back(text: str, stop: list[str]) -> int:
    """The length of the longest end of `text` that is the beginning of a stop string."""
    return max((n for s in stop for n in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:n])), default=0)


# --- the engine ---------------------------------------------------------------------------------------


class Engine:
    """The thread that owns the model and decodes every request in flight as one batch.

    `submit(job)` queues a request. Between steps the engine admits waiting jobs (up to `max_batch`
    in flight), prefilling them together, and drops the finished and cancelled ones: rows join and
    leave the batch at step boundaries. Sampling is per request (its own sampler and seeded
    generator); rows that share a sampler and have no generator of their own are sampled in one call.
    An error inside the loop fails the jobs in flight (with the message) and the engine goes on."""

    def __init__(self, model, *, max_batch: int):
        if not supports_kv_cache(model):
            raise GptkitError(f"serving decodes through the KV cache, which the attention {model.config.attention.name!r} "
                              "does not support (supports_kv_cache = False)")
        self.model, self.max_batch = model, max_batch
        self.waiting: queue.Queue[Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="gptkit-serve-engine", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.waiting.put(None)
        self.thread.join()

    def submit(self, job: Job) -> None:
        self.waiting.put(job)

    def _admit(self, room: int, block: bool) -> list[Job] | None:
        """Waiting jobs to start (waiting for one when `block`), at most `room`; None when told to stop."""
        jobs: list[Job] = []
        while len(jobs) < room:
            try:
                job = self.waiting.get(block=block and not jobs)
            except queue.Empty:
                break
            if job is None:
                for job in jobs:
                    job.emit(("error", "the server is shutting down"))
                return None
            if not job.cancelled:
                jobs.append(job)
        return jobs

    def _run(self) -> None:
        device = next(self.model.parameters()).device
        with torch.no_grad(), packed_linears(self.model):
            rows, active, logits = DecodingRows(self.model), [], None
            while (new := self._admit(self.max_batch - len(active), block=not active)) is not None:
                try:
                    if new:
                        fresh = rows.add([job.prompt_ids for job in new])
                        logits = fresh if logits is None else torch.cat([logits, fresh])
                        active += new
                    if not active:
                        continue
                    tokens = self._sample(active, logits, device)
                    kept = [i for i, (job, token) in enumerate(zip(active, tokens.tolist())) if not job.cancelled and not job.feed(token)]
                    rows.keep(kept)
                    active = [active[i] for i in kept]
                    logits = rows.step(tokens[kept]) if active else None
                except Exception as exc:  # the server stays up; these requests fail with the reason
                    log.exception("generation failed")
                    for job in {*active, *new}:
                        job.emit(("error", f"generation failed: {type(exc).__name__}: {exc}"))
                    rows, active, logits = DecodingRows(self.model), [], None
            for job in active:
                job.emit(("error", "the server is shutting down"))

    @staticmethod
    def _sample(jobs: list[Job], logits: torch.Tensor, device) -> torch.Tensor:
        tokens = torch.empty(len(jobs), dtype=torch.long, device=device)
        shared: dict[Callable, list[int]] = defaultdict(list)
        for i, job in enumerate(jobs):
            if job.generator is None:
                shared[job.sampler].append(i)
            else:
                tokens[i] = job.sampler(logits[i : i + 1], job.generator)[0]
        for sampler, rows in shared.items():
            index = torch.tensor(rows, device=device)
            tokens[index] = sampler(logits[index], None)
        return tokens


# --- requests -----------------------------------------------------------------------------------

JSON_TYPES = {
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def json_type(value: Any) -> str:
    """The JSON type of a parsed value, with its article ('a string', 'an integer'), or 'null'."""
    return next((with_article(name) for name, check in JSON_TYPES.items() if check(value)), "null")


def with_article(name: str) -> str:
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def field(body: dict, name: str, kind: str, default: Any = None) -> Any:
    """body[name] checked to be of JSON type `kind` (null or absent: `default`)."""
    value = body.get(name)
    if value is None:
        return default
    if not JSON_TYPES[kind](value):
        raise APIError(f"Invalid type for '{name}': expected {with_article(kind)}, but got {json_type(value)} instead.", param=name, code="invalid_type")
    return value


def unsupported(name: str, why: str) -> APIError:
    return APIError(f"'{name}' is not supported by this server: {why}", param=name, code="unsupported_parameter")


COMMON_FIELDS = {"model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "stop", "seed",
                 "logprobs", "presence_penalty", "frequency_penalty", "logit_bias", "user"}
COMPLETION_FIELDS = COMMON_FIELDS | {"prompt", "echo", "best_of", "suffix"}
CHAT_FIELDS = COMMON_FIELDS | {"messages", "max_completion_tokens", "top_logprobs", "response_format"}


class Service:
    """What the endpoints do, apart from HTTP: check a request, turn it into a Job for the engine,
    and write OpenAI's response objects."""

    def __init__(self, engine: Engine, tokenizer: Tokenizer, *, model_id: str, prompt_format: PromptFormat | None,
                 context_length: int, device):
        self.engine, self.tokenizer, self.model_id = engine, tokenizer, model_id
        self.prompt_format, self.context_length, self.device = prompt_format, context_length, device
        self.created = int(time.time())

    def model_card(self) -> dict[str, Any]:
        return {"id": self.model_id, "object": "model", "created": self.created, "owned_by": "gptkit"}

    # request checks shared by both endpoints

    def check_common(self, body: dict, known: set[str]) -> None:
        unknown = sorted(set(body) - known)
        if unknown:
            raise APIError(f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0])
        model = field(body, "model", "string")
        if model is None:
            raise APIError("You must provide a model parameter.", param="model")
        if model != self.model_id:
            raise APIError(f"The model `{model}` does not exist. This server serves `{self.model_id}`.", param="model",
                           code="model_not_found", status=404)
        if field(body, "n", "integer", 1) != 1:
            raise unsupported("n", "it generates one choice per request (n=1); send several requests, they are batched together")
        for name in ("presence_penalty", "frequency_penalty"):
            if field(body, name, "number", 0) != 0:
                raise unsupported(name, "only 0 is accepted")
        if field(body, "logit_bias", "object", {}):
            raise unsupported("logit_bias", "only an empty object is accepted")
        field(body, "user", "string")  # an end-user id for the caller's own records; it changes nothing here

    def job_for(self, body: dict, prompt_ids: list[int], max_tokens: int, emit: Callable[[tuple], None]) -> Job:
        temperature = field(body, "temperature", "number", 1.0)
        if not 0 <= temperature <= 2:
            raise APIError(f"{temperature} is not a valid temperature: it must be between 0 and 2.", param="temperature", code="invalid_value")
        top_p = field(body, "top_p", "number", 1.0)
        if not 0 < top_p <= 1:
            raise APIError(f"{top_p} is not a valid top_p: it must be greater than 0 and at most 1.", param="top_p", code="invalid_value")
        stop = field(body, "stop", "string" if isinstance(body.get("stop"), str) else "array", [])
        stop = [stop] if isinstance(stop, str) else stop
        if len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
            raise APIError("'stop' must be a non-empty string or an array of at most 4 non-empty strings.", param="stop", code="invalid_value")
        seed = field(body, "seed", "integer")
        if temperature == 0:
            sampler = build_sampler("greedy")
        elif top_p < 1:
            sampler = build_sampler("top-p", temperature=temperature, top_p=top_p)
        else:
            sampler = build_sampler("top-k", temperature=temperature)
        return Job(prompt_ids, max_tokens=max_tokens, sampler=sampler, generator=make_generator(seed, self.device),
                   stop=stop, tokenizer=self.tokenizer, emit=emit)

    def stream_settings(self, body: dict) -> tuple[bool, bool]:
        """(stream, include_usage)."""
        stream = field(body, "stream", "boolean", False)
        options = field(body, "stream_options", "object")
        if options is not None and not stream:
            raise APIError("'stream_options' is only allowed when 'stream' is true.", param="stream_options")
        unknown = sorted(set(options or {}) - {"include_usage"})
        if unknown:
            raise APIError(f"Unrecognized stream option: {unknown[0]}", param="stream_options")
        return stream, field(options or {}, "include_usage", "boolean", False)

    def check_length(self, prompt_ids: list[int], max_tokens: int, param: str) -> None:
        if len(prompt_ids) + max_tokens > self.context_length:
            raise APIError(
                f"This model's maximum context length is {self.context_length} tokens. However, you requested "
                f"{len(prompt_ids) + max_tokens} tokens ({len(prompt_ids)} in the {param}, {max_tokens} in the completion). "
                f"Please reduce the length of the {param} or the completion.",
                param=param, code="context_length_exceeded",
            )

    def max_tokens(self, body: dict, name: str, default: int | None) -> int | None:
        value = field(body, name, "integer", default)
        if value is not None and not 1 <= value < self.context_length:
            raise APIError(f"'{name}' must be between 1 and {self.context_length - 1} (the context is {self.context_length} tokens), got {value}.",
                           param=name, code="invalid_value")
        return value

    # /v1/completions

    def completion_job(self, body: dict, emit: Callable[[tuple], None]) -> Job:
        self.check_common(body, COMPLETION_FIELDS)
        if field(body, "echo", "boolean", False):
            raise unsupported("echo", "the response holds the completion only")
        if field(body, "logprobs", "integer") is not None:
            raise unsupported("logprobs", "log-probabilities are not returned")
        if field(body, "best_of", "integer", 1) != 1:
            raise unsupported("best_of", "only 1 is accepted")
        if field(body, "suffix", "string"):
            raise unsupported("suffix", "GPT-2 models continue text; they do not fill in")
        prompt_ids = self.prompt_ids(body.get("prompt"))
        max_tokens = self.max_tokens(body, "max_tokens", 16)
        self.check_length(prompt_ids, max_tokens, "prompt")
        return self.job_for(body, prompt_ids, max_tokens, emit)

    def prompt_ids(self, prompt: Any) -> list[int]:
        """A prompt as OpenAI takes it: a string, or token ids; a list of one of those."""
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
        elif isinstance(prompt, list) and prompt and all(JSON_TYPES["integer"](t) for t in prompt):
            if not all(0 <= t < self.tokenizer.vocab_size for t in prompt):
                raise APIError(f"'prompt' holds a token id outside the vocabulary (0 to {self.tokenizer.vocab_size - 1}).", param="prompt", code="invalid_value")
            ids = list(prompt)
        elif prompt is None:
            raise APIError("You must provide a prompt.", param="prompt")
        elif isinstance(prompt, list) and all(isinstance(p, (str, list)) for p in prompt) and len(prompt) > 1:
            raise unsupported("prompt", f"it takes one prompt per request (got {len(prompt)}); send them as separate requests, which are batched together")
        else:
            raise APIError("'prompt' must be a string, an array of token ids, or an array of one of those.", param="prompt", code="invalid_type")
        if not ids:
            raise APIError("'prompt' is empty: give at least one token to continue.", param="prompt", code="invalid_value")
        return ids

    # /v1/chat/completions

    def chat_job(self, body: dict, emit: Callable[[tuple], None]) -> Job:
        self.check_common(body, CHAT_FIELDS)
        if field(body, "logprobs", "boolean", False) or field(body, "top_logprobs", "integer") is not None:
            raise unsupported("logprobs", "log-probabilities are not returned")
        response_format = field(body, "response_format", "object", {"type": "text"})
        if response_format != {"type": "text"}:
            raise unsupported("response_format", 'only {"type": "text"} is accepted')
        system, turns, instruction = self.conversation(body.get("messages"))
        if self.prompt_format is None:
            raise APIError("This model records no prompt format, which chat needs: start gptkit serve with --prompt-format NAME "
                           "(or use /v1/completions).", param="messages", code="no_prompt_format")
        max_tokens = self.max_tokens(body, "max_completion_tokens", None) or self.max_tokens(body, "max_tokens", None)
        prompt_ids, _ = fit_conversation(self.prompt_format, self.tokenizer, turns, instruction, context_length=self.context_length,
                                         room=max_tokens or 1, system=system)
        self.check_length(prompt_ids, max_tokens or 1, "messages")
        return self.job_for(body, prompt_ids, max_tokens or self.context_length - len(prompt_ids), emit)

    @staticmethod
    def conversation(messages: Any) -> tuple[str, list[tuple[str, str]], str]:
        """(system text, earlier (user, assistant) turns, the last user message) from OpenAI's messages:
        system (or developer) messages first, then user and assistant in turn, ending with the user."""
        if not isinstance(messages, list) or not messages:
            raise APIError("'messages' must be a non-empty array of messages.", param="messages", code="invalid_value" if isinstance(messages, list) else "invalid_type")
        system, said = [], []
        for i, message in enumerate(messages):
            where = f"messages[{i}]"
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise APIError(f"'{where}' must be an object with a 'role' and a 'content'.", param=where, code="invalid_type")
            role, text = message["role"], message_text(message.get("content"), where)
            if role in ("system", "developer"):
                if said:
                    raise APIError(f"'{where}': {role} messages go before the conversation, not within it.", param=where, code="invalid_value")
                system.append(text)
            elif role in ("user", "assistant"):
                expected = "user" if len(said) % 2 == 0 else "assistant"
                if role != expected:
                    raise APIError(f"'{where}': expected a {expected} message (after any system messages, user and assistant take turns, "
                                   "starting and ending with the user).", param=where, code="invalid_value")
                said.append(text)
            else:
                raise APIError(f"'{where}.role': '{role}' is not supported (system, developer, user and assistant are).", param=f"{where}.role",
                               code="invalid_value")
        if len(said) % 2 == 0:
            raise APIError("The last message must be from the user.", param="messages", code="invalid_value")
        return "\n\n".join(system), list(zip(said[0:-1:2], said[1::2])), said[-1]


def message_text(content: Any, where: str) -> str:
    """A message's content: a string, or an array of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    raise APIError(f"'{where}.content' must be a string or an array of text parts.", param=f"{where}.content", code="invalid_type")


def usage(job: Job) -> dict[str, int]:
    prompt, completion = len(job.prompt_ids), len(job.new_ids)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


# --- HTTP --------------------------------------------------------------------------------------------


def create_app(service: Service):
    """The FastAPI app over `service`; starting it starts the engine, stopping it stops the engine."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse, StreamingResponse
        from starlette.exceptions import HTTPException
    except ImportError:
        raise GptkitError(SERVE_EXTRA) from None

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.engine.start()
        yield
        await asyncio.to_thread(service.engine.stop)

    app = FastAPI(title="gptkit", lifespan=lifespan)

    @app.exception_handler(APIError)
    async def api_error(request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        return JSONResponse(APIError(f"{request.method} {request.url.path}: {exc.detail}", status=exc.status_code).body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def server_error(request, exc: Exception):
        log.exception("request failed")
        return JSONResponse(APIError(f"internal error: {type(exc).__name__}: {exc}", type="server_error", status=500).body(), status_code=500)

    @app.get("/health")
    async def health():
        if not service.engine.thread.is_alive():
            raise APIError("the generation engine has stopped", type="server_error", status=503)
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [service.model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id != service.model_id:
            raise APIError(f"The model `{model_id}` does not exist.", param="model", code="model_not_found", status=404)
        return service.model_card()

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await respond(request, service.completion_job, "cmpl", "text_completion", lambda piece, first: {"text": piece})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        def delta(piece: str, first: bool) -> dict[str, Any]:
            return {"delta": {"role": "assistant", "content": piece} if first else {"content": piece}}

        return await respond(request, service.chat_job, "chatcmpl", "chat.completion", delta)

    async def respond(request, make_job, prefix: str, kind: str, piece_of: Callable[[str, bool], dict]):
        body = await json_body(request)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        job = make_job(body, lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
        stream, include_usage = service.stream_settings(body)
        service.engine.submit(job)
        id_ = f"{prefix}-{uuid.uuid4().hex}"
        if stream:
            return StreamingResponse(sse(job, events, id_, kind + (".chunk" if kind.startswith("chat") else ""), piece_of, include_usage),
                                     media_type="text/event-stream")
        try:
            async for _ in job_events(job, events):
                pass
        except asyncio.CancelledError:
            job.cancelled = True
            raise
        finish = job.finish_reason
        choice = {"index": 0, **({"message": {"role": "assistant", "content": job.text}} if kind.startswith("chat") else {"text": job.text}),
                  "logprobs": None, "finish_reason": finish}
        return {"id": id_, "object": kind, "created": int(time.time()), "model": service.model_id, "choices": [choice], "usage": usage(job)}

    async def sse(job: Job, events: asyncio.Queue, id_: str, kind: str, piece_of, include_usage: bool) -> AsyncIterator[str]:
        def chunk(fields: dict | None, finish: str | None = None, usage_: dict | None = None) -> str:
            obj = {"id": id_, "object": kind, "created": int(time.time()), "model": service.model_id,
                   "choices": [] if fields is None else [{"index": 0, **fields, "logprobs": None, "finish_reason": finish}]}
            if include_usage:
                obj["usage"] = usage_
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        try:
            first = True
            if kind.startswith("chat"):
                yield chunk(piece_of("", True))
                first = False
            try:
                async for piece in job_events(job, events):
                    yield chunk(piece_of(piece, first))
                    first = False
            except APIError as exc:
                yield f"data: {json.dumps(exc.body())}\n\n"
                return
            yield chunk({"delta": {}} if kind.startswith("chat") else piece_of("", first), job.finish_reason)
            if include_usage:
                yield chunk(None, usage_=usage(job))
            yield "data: [DONE]\n\n"
        finally:
            job.cancelled = True  # the client left early (or the job is over: then it changes nothing)

    return app


async def job_events(job: Job, events: asyncio.Queue) -> AsyncIterator[str]:
    """The text pieces of a job as the engine emits them; sets `job.finish_reason` at the end."""
    while True:
        kind, value = await events.get()
        if kind == "text":
            yield value
        elif kind == "done":
            job.finish_reason = value
            return
        else:
            raise APIError(value, type="server_error", status=500)


async def json_body(request) -> dict:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(f"We could not parse the JSON body of your request: {exc}. The body must be a JSON object.") from None
    if not isinstance(body, dict):
        raise APIError(f"The body of your request must be a JSON object, not {json_type(body)}.")
    return body


# --- running -------------------------------------------------------------------------------------------


def build_service(source: str, *, max_batch: int, model_id: str | None = None, format_name: str | None = None,
                  device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> Service:
    """The model SOURCE loaded with its engine (not started) and request handling."""
    model, tokenizer, saved_format = load_model_and_prompt(source, device=device, dtype=dtype)
    if tokenizer is None:
        raise GptkitError(f"{source}: no tokenizer comes with this model")
    check_vocab(model.config, tokenizer, str(source))
    spec = Component(format_name) if format_name else saved_format
    prompt_format = registry.prompt.build(spec, Context(tokenizer=tokenizer)) if spec is not None else None
    return Service(Engine(model, max_batch=max_batch), tokenizer, model_id=model_id or str(source), prompt_format=prompt_format,
                   context_length=model.config.context_length, device=device)


def run_server(source: str, *, host: str, port: int, **options) -> None:
    """Serve the model SOURCE until Ctrl-C; `options` as `build_service`."""
    try:
        import uvicorn
    except ImportError:
        raise GptkitError(SERVE_EXTRA) from None
    service = build_service(source, **options)
    app = create_app(service)
    print(f"serving {service.model_id!r} on http://{host}:{port}/v1 (OpenAI API; max batch {service.engine.max_batch})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info")


@contextlib.contextmanager
def serving_in_thread(service: Service, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """`service` served by uvicorn in a background thread (tests, benchmarks, notebooks): yields the
    base URL (`port` 0 picks a free one); stops the server and its engine on exit."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app(service), host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="gptkit-serve-http", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise GptkitError(f"the server did not start on {host}:{port}")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join()
