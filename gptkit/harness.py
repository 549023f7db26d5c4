"""EleutherAI's lm-evaluation-harness on any gptkit model: `gptkit eval SOURCE --harness TASKS`.

`GptkitLM` is lm-eval's model "gptkit" (in its model registry once this module is imported), and
answers lm-eval's three kinds of request with gptkit's own model:

- loglikelihood (multiple-choice tasks): context and continuation in one forward, in right-padded
  batches sorted by length; the continuation's log-probabilities summed, and whether greedy
  decoding would have produced it;
- loglikelihood_rolling (perplexity tasks): the text in lm-eval's rolling windows of the context,
  each token predicted once;
- generate_until: contexts decoded in batches with the KV cache (gptkit.generation), greedy unless
  the task samples, until end-of-text, `max_gen_toks`, or every row has met a stop string; each
  text is then cut at its first stop string.

It tokenizes as lm-eval's `hf` model does (lm-eval's TemplateLM): trailing spaces of a context go
to the continuation, an empty context is the end-of-text token, and what does not fit the context
is cut from the left; so a model exported with `gptkit export --format hf` scores the same under
both (tests/test_harness.py checks every request to 1e-4). This module needs the `eval` extra.
"""

from __future__ import annotations

import difflib
import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from lm_eval import simple_evaluate, utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.tasks import TaskManager
from tqdm import tqdm

from gptkit.errors import GptkitError
from gptkit.generation import Generation, TextDecoder, build_sampler
from gptkit.sources import load_model
from gptkit.weights import check_vocab

SAMPLING_KEYS = ("top_p", "top_k")  # generation settings a task may give besides until, max_gen_toks, do_sample, temperature


@register_model("gptkit")
class GptkitLM(TemplateLM):
    """lm-eval's model over a gptkit model: `GptkitLM(pretrained=SOURCE)` (lm-eval's
    `--model gptkit --model_args pretrained=SOURCE`), or `GptkitLM(model=..., tokenizer=...)`."""

    def __init__(self, pretrained: str | None = None, *, model=None, tokenizer=None, batch_size: int | str = 8,
                 device: str = "cpu", max_gen_toks: int = 256):
        super().__init__()
        if model is None:
            if pretrained is None:
                raise GptkitError("the gptkit model needs pretrained=SOURCE (a run, checkpoint or model folder, or a model name)")
            model, tokenizer = load_model(pretrained, device=device)
        if tokenizer is None:
            raise GptkitError("no tokenizer comes with this model")
        check_vocab(model.config, tokenizer, str(pretrained or "the model"))
        self.model, self.tokenizer, self.max_gen_toks = model.eval(), tokenizer, int(max_gen_toks)
        try:
            self.batch_size = int(batch_size)  # lm-eval passes model_args as text
        except ValueError:
            raise GptkitError(f"batch_size={batch_size!r}: give a number of requests (the gptkit model picks none itself)") from None
        self._device = next(model.parameters()).device

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def max_length(self) -> int:
        return self.model.config.context_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string)  # GPT-2 adds no special tokens

    @torch.inference_mode()
    def _loglikelihood_tokens(self, requests: Sequence[tuple[Any, list[int], list[int]]], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(cache key, context ids, continuation ids) -> (log-probability of the continuation, whether it is the greedy one)."""
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        for start in tqdm(range(0, len(order), self.batch_size), disable=disable_tqdm, desc="loglikelihood batches"):
            chunk = order[start : start + self.batch_size]
            inputs = []
            for i in chunk:
                _, context, continuation = requests[i]
                if len(continuation) > self.max_length:
                    raise GptkitError(f"a continuation of {len(continuation)} tokens is longer than the context of {self.max_length}")
                inputs.append((context + continuation)[-(self.max_length + 1) :][:-1])  # the last token is only predicted
            ids = torch.zeros(len(chunk), max(map(len, inputs)), dtype=torch.long)
            for row, tokens in enumerate(inputs):
                ids[row, : len(tokens)] = torch.tensor(tokens)  # right padding: causal attention never sees it
            logits = self.model(ids.to(self._device))
            for row, i in enumerate(chunk):
                key, _, continuation = requests[i]
                end, target = len(inputs[row]), torch.tensor(continuation, device=self._device)
                logprobs = F.log_softmax(logits[row, end - len(continuation) : end].float(), dim=-1)
                results[i] = (float(logprobs.gather(-1, target[:, None]).sum()), bool((logprobs.argmax(-1) == target).all()))
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, results[i])
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owners = [], []
        for n, (text,) in enumerate(r.args for r in requests):
            rolling = utils.get_rolling_token_windows(token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                                                      max_seq_len=self.max_length, context_len=1)
            for context, continuation in map(utils.make_disjoint_window, rolling):
                windows.append((None, context, continuation))
                owners.append(n)
        totals = [0.0] * len(requests)
        for n, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)):
            totals[n] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = defaultdict(list)  # requests with the same generation settings run together
        for i, request in enumerate(requests):
            groups[json.dumps(request.args[1], sort_keys=True, default=str)].append(i)
        eos_text = self.tokenizer.decode([self.eot_token_id])
        for members in tqdm(groups.values(), disable=disable_tqdm, desc="generate_until groups"):
            settings = normalize_gen_kwargs(requests[members[0]].args[1], self.max_gen_toks)
            until = handle_stop_sequences(settings.pop("until", None), eos=eos_text)
            max_gen_toks = settings.pop("max_gen_toks")
            if max_gen_toks >= self.max_length:
                raise GptkitError(f"the task asks for {max_gen_toks} new tokens; the model's context is {self.max_length}")
            sampler = self._sampler(settings)
            contexts = {i: self.tok_encode(requests[i].args[0])[-(self.max_length - max_gen_toks) :] for i in members}
            members = sorted(members, key=lambda i: -len(contexts[i]))
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                for i, text in zip(chunk, self._generate([contexts[i] for i in chunk], max_gen_toks, sampler, until)):
                    results[i] = postprocess_generated_text(text, until, None)
                    self.cache_hook.add_partial("generate_until", requests[i].args, results[i])
        return results

    @torch.inference_mode()
    def _generate(self, contexts: list[list[int]], max_new_tokens: int, sampler, until: list[str]) -> list[str]:
        """Each context's completion, decoded together, stopping early once every row has met a stop
        string (an empty one, what end-of-text decodes to with some tokenizers, is no stop)."""
        until = [s for s in until if s]
        generation = Generation(self.model, contexts, max_new_tokens=max_new_tokens, sampler=sampler, eos_id=self.eot_token_id)
        decoders, texts = [TextDecoder(self.tokenizer) for _ in contexts], [""] * len(contexts)
        steps = iter(generation)
        for tokens in steps:
            for row, token in enumerate(tokens):
                if token is not None:
                    texts[row] += decoders[row].add(token)
            if all(c.stop_reason == "eos" or any(s in text for s in until) for c, text in zip(generation.completions, texts)):
                steps.close()
                break
        return [self.tokenizer.decode(c.new_ids) for c in generation.completions]

    @staticmethod
    def _sampler(settings: dict[str, Any]):
        """Greedy unless the task samples (do_sample with a temperature), as lm-eval's hf model."""
        unknown = sorted(set(settings) - {"do_sample", "temperature", *SAMPLING_KEYS})
        if unknown:
            raise GptkitError(f"the task's generation setting {unknown[0]!r} is not supported by the gptkit model "
                              f"(it takes until, max_gen_toks, do_sample, temperature, {', '.join(SAMPLING_KEYS)})")
        if not settings["do_sample"] or settings["temperature"] == 0:
            return build_sampler("greedy")
        return build_sampler(None, temperature=settings["temperature"], **{k: settings[k] for k in SAMPLING_KEYS if k in settings})


def evaluate(lm: GptkitLM, tasks: list[str], *, tasks_paths: Sequence[str | Path] = (), limit: int | None = None,
             log_samples: bool = False) -> dict[str, Any]:
    """lm-eval's results for `tasks` (registered names, or tasks and groups defined by the YAML files
    under `tasks_paths`), at most `limit` documents per task."""
    for folder in tasks_paths:
        if not Path(folder).is_dir():
            raise GptkitError(f"--tasks-path {folder}: no such folder")
    manager = TaskManager(include_path=[str(p) for p in tasks_paths] or None)
    known = set(manager.all_tasks)
    for task in tasks:
        if task not in known:
            near = difflib.get_close_matches(task, known, n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else " (--tasks-path DIR adds the tasks defined by the YAML files in DIR)"
            raise GptkitError(f"--harness: unknown lm-eval task {task!r}{hint}")
    return simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit, log_samples=log_samples)


def results_table(results: dict[str, Any]) -> str:
    """lm-eval's own tables: tasks, then groups when there are any."""
    table = utils.make_table(results)
    return table + ("\n" + utils.make_table(results, "groups") if results.get("groups") else "")


def results_json(results: dict[str, Any]) -> str:
    """The scores as one JSON object: lm-eval's results (and groups), n-shot, versions, higher_is_better, n-samples."""
    keys = ("results", "groups", "n-shot", "versions", "higher_is_better", "n-samples")
    return json.dumps({k: results[k] for k in keys if k in results}, default=str)
