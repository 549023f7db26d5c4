"""Scorers: the instruct recipe's test records, each with the model's `model_response`, -> metrics.

A scorer is built as `factory(ctx, **params)` and called with the records (dicts with instruction,
input, output and model_response); it returns {"mean": the mean score, or None when no record was
scored, "n": how many were scored, ...}, and the recipe logs the mean under its `metric_key`.

- `exact-match` (exact_match): 1 when response and output are equal after normalising both:
  surrounding whitespace stripped, lower-cased, runs of whitespace made one space and trailing
  `. , ; : ! ?` removed, so "Tac." matches "tac" but "tca" does not.
- `rouge-l` (rouge_l): ROUGE-L F1 (longest common subsequence of words) of response against
  output, computed by Google's `rouge-score`, the implementation papers report with. It is an
  optional dependency (in the `dev` extra; pure Python, with absl-py, nltk, numpy and six), imported
  when the scorer is built, so a run missing it stops before training. Its tokenizer lower-cases and
  keeps runs of a-z and 0-9 only: letters outside ASCII do not count.
- `ollama-judge` (judge_score): the original ch07 evaluation: a local Ollama model (llama3) is asked
  to score each response from 0 to 100. A server that cannot be reached does not raise: the result
  carries an `error` line instead, so the recipe writes the other scores and reports it.

`exact-match` and `rouge-l` take `group_by`, a record field (e.g. "family" of synthetic-tasks):
then the result also holds {"groups": {value: {"mean", "n"}}}.
"""

from __future__ import annotations

import http.client
import json
import re
import urllib.error
import urllib.request
from statistics import fmean
from typing import Any, Callable

import attrs
from tqdm import tqdm

from gptkit import hookimpl
from gptkit.download import is_url
from gptkit.errors import GptkitError
from gptkit.schema import Component


def text_field(record: dict[str, Any], index: int, name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str):
        raise GptkitError(f"scorer: record {index} needs a string field {name!r}, got {value!r}")
    return value


def summary(scores: list[float], keys: list[str] | None = None) -> dict[str, Any]:
    """{"mean", "n"} of `scores`, and with `keys` (one a score) the same for each key's scores."""
    result: dict[str, Any] = {"mean": fmean(scores) if scores else None, "n": len(scores)}
    if keys is not None:
        groups: dict[str, list[float]] = {}
        for key, score in zip(keys, scores):
            groups.setdefault(key, []).append(score)
        result["groups"] = {key: summary(groups[key]) for key in sorted(groups)}
    return result


class PerRecordScorer:
    """A score for each record from its output and model response, averaged (and grouped by `group_by`)."""

    metric_key: str

    def __init__(self, group_by: str | None = None):
        self.group_by = group_by

    def score(self, output: str, response: str) -> float:
        raise NotImplementedError

    def __call__(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        scores = [
            self.score(text_field(record, i, "output"), text_field(record, i, "model_response")) for i, record in enumerate(records)
        ]
        keys = None
        if self.group_by is not None:
            missing = [i for i, record in enumerate(records) if self.group_by not in record]
            if missing:
                raise GptkitError(f"scorer: group_by = {self.group_by!r}, but record {missing[0]} has no such field")
            keys = [str(record[self.group_by]) for record in records]
        return summary(scores, keys)


def normalise(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".,;:!? ")


class ExactMatch(PerRecordScorer):
    metric_key = "exact_match"

    def score(self, output: str, response: str) -> float:
        return float(normalise(response) == normalise(output))


class RougeL(PerRecordScorer):
    metric_key = "rouge_l"

    def __init__(self, group_by: str | None = None, use_stemmer: bool = False):
        super().__init__(group_by)
        try:
            from rouge_score import rouge_scorer
        except ImportError:
            raise GptkitError(
                "scorer 'rouge-l' needs the rouge-score package: pip install rouge-score (it comes with gptkit[dev])"
            ) from None
        self.rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)

    def score(self, output: str, response: str) -> float:
        return self.rouge.score(target=output, prediction=response)["rougeL"].fmeasure


class JudgeUnavailable(Exception):
    """The judge could not be asked, or did not answer as Ollama does."""


def judge_prompt(record: dict[str, Any], request: Callable[[dict[str, Any]], str]) -> str:
    """The original ch07 `generate_model_scores` prompt, word for word: `request` writes the
    record's instruction and input as the Alpaca prompt does (the original's `format_input`)."""
    return (
        f"Given the input `{request(record)}` "
        f"and correct output `{record['output']}`, "
        f"score the model response `{record['model_response']}`"
        f" on a scale from 0 to 100, where 100 is the best score. "
        f"Respond with the integer number only."
    )


def parse_score(reply: str) -> int | None:
    """The integer 0-100 that the reply is (a trailing period allowed), or None."""
    match = re.fullmatch(r"\s*(\d+)\.?\s*", reply)
    return int(match.group(1)) if match and int(match.group(1)) <= 100 else None


class OllamaJudge:
    """Each response scored 0-100 by an Ollama model through /api/chat, deterministically (seed 123,
    temperature 0, as the original); replies that are not such an integer are counted as
    `unparsable` and left out of the mean."""

    metric_key = "judge_score"

    def __init__(self, request: Callable[[dict[str, Any]], str], url: str = "http://localhost:11434", model: str = "llama3", timeout_s: float = 120.0):
        self.endpoint = url.rstrip("/") + "/api/chat"
        self.request, self.model, self.timeout_s = request, model, timeout_s

    def ask(self, prompt: str) -> str:
        """The model's reply; the body may be one JSON object or Ollama's stream of them, one a line."""
        payload = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "options": {"seed": 123, "temperature": 0, "num_ctx": 2048},
            "stream": False,
        }
        request = urllib.request.Request(
            self.endpoint, data=json.dumps(payload).encode("utf-8"), headers={"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                body = response.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace")
            try:
                detail = json.loads(detail)["error"]
            except (ValueError, KeyError, TypeError):
                pass
            raise JudgeUnavailable(f"HTTP {exc.code}: {' '.join(str(detail).split())[:200] or exc.reason}") from None
        except urllib.error.URLError as exc:
            reason = exc.reason.strerror if isinstance(exc.reason, OSError) and exc.reason.strerror else exc.reason
            raise JudgeUnavailable(str(reason)) from None
        except (OSError, http.client.HTTPException) as exc:  # timeouts, connections cut, not HTTP
            raise JudgeUnavailable(f"{type(exc).__name__}: {exc}") from None
        try:
            return "".join(json.loads(line)["message"]["content"] for line in body.splitlines() if line.strip())
        except (ValueError, KeyError, TypeError):
            raise JudgeUnavailable(f"the answer is not Ollama's chat JSON: {body[:80]!r}") from None

    def __call__(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        scores: list[float] = []
        unparsable = 0
        for i, record in enumerate(tqdm(records, desc="judging", unit="response", leave=False)):
            for name in ("instruction", "output", "model_response"):
                text_field(record, i, name)
            try:
                reply = self.ask(judge_prompt(record, self.request))
            except JudgeUnavailable as exc:
                error = (
                    f"ollama-judge: no score from {self.endpoint} (model {self.model!r}) after {i} of {len(records)} "
                    f"records: {exc}; start the server (`ollama serve`, `ollama pull {self.model}`) or set its url"
                )
                return {**summary(scores), "unparsable": unparsable, "error": error}
            score = parse_score(reply)
            if score is None:
                unparsable += 1
            else:
                scores.append(score)
        return {**summary(scores), "unparsable": unparsable}


@attrs.define
class ExactMatchParams:
    group_by: str | None = None  # a record field (e.g. "family"): also report the mean of each of its values


@attrs.define
class RougeLParams:
    group_by: str | None = None  # as exact-match's
    use_stemmer: bool = False  # Porter-stem words before matching (rouge-score's option)


def _http_url(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    """an http(s) address"""
    if not is_url(value):
        raise ValueError(f"'url' must be an http(s) address such as http://localhost:11434, got {value!r}")


@attrs.define
class OllamaJudgeParams:
    url: str = attrs.field(default="http://localhost:11434", validator=_http_url)  # the scorer posts to {url}/api/chat
    model: str = "llama3"
    timeout_s: float = attrs.field(default=120.0, validator=attrs.validators.gt(0))  # per response


@hookimpl
def register_components(registry):
    registry.scorer.register(
        "exact-match", lambda ctx, group_by: ExactMatch(group_by), params=ExactMatchParams,
        doc="Share of responses equal to the output (case, spacing and trailing punctuation ignored).",
    )
    registry.scorer.register(
        "rouge-l", lambda ctx, group_by, use_stemmer: RougeL(group_by, use_stemmer), params=RougeLParams,
        doc="Mean ROUGE-L F1 of response against output (needs the rouge-score package).",
    )
    def ollama_judge(ctx, url, model, timeout_s):
        alpaca = registry.prompt.build(Component("alpaca"), ctx)  # the built-in prompt format, found when the judge is built
        return OllamaJudge(alpaca.request, url, model, timeout_s)

    registry.scorer.register(
        "ollama-judge", ollama_judge, params=OllamaJudgeParams,
        doc="Mean 0-100 score a local Ollama model (llama3) gives each response, as the original ch07.",
    )
