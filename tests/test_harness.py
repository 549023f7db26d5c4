"""`gptkit eval --harness`: lm-eval's `gptkit` model scores a locally defined task (multiple choice,
generate_until, loglikelihood_rolling) as lm-eval's own `hf` model does on the folder that
`gptkit export --format hf` writes, request by request, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import gpt2_vocab_dir
from gptkit.checkpoint import save_model
from gptkit.model import GPT, GPTConfig

OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
os.environ.update(OFFLINE)  # before datasets is imported: it reads them once
pytest.importorskip("lm_eval")
pytest.importorskip("transformers")
from gptkit.harness import GptkitLM, evaluate  # noqa: E402  (needs lm_eval)

TASKS = ["toy_choice", "toy_answer", "toy_perplexity"]
DOCS = [
    {"question": "The sky is", "choices": [" blue", " green", " very loud"], "label": 0, "answer": "blue"},
    {"question": "Two plus two is", "choices": [" four", " five", " a fish"], "label": 0, "answer": "four"},
    {"question": "Water is", "choices": [" wet", " dry"], "label": 0, "answer": "wet"},
    {"question": "The capital of France is", "choices": [" Paris", " Rome", " London", " Berlin"], "label": 0, "answer": "Paris"},
    {"question": "Cats say", "choices": [" meow", " woof"], "label": 0, "answer": "meow"},
    {"question": "", "choices": [" Once", " Twice"], "label": 1, "answer": "Once"},
]
TEXTS = [
    "I had always thought Jack Gisburn rather a cheap genius--though a good fellow enough--so it was no great surprise to me " * 6,
    "Every effort moves you.",
]


def write_tasks(folder):
    """Three lm-eval tasks in YAML over JSON Lines files: multiple choice, generate_until and loglikelihood_rolling."""
    folder.mkdir()
    (folder / "questions.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS), encoding="utf-8")
    (folder / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS), encoding="utf-8")
    common = "dataset_path: json\ntest_split: test\nmetadata:\n  version: 1.0\n"
    data = lambda name: f"dataset_kwargs:\n  data_files:\n    test: {folder / name}\n"  # noqa: E731
    (folder / "choice.yaml").write_text(
        "task: toy_choice\n" + common + data("questions.jsonl")
        + 'output_type: multiple_choice\ndoc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: label\n'
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n", encoding="utf-8")
    (folder / "answer.yaml").write_text(
        "task: toy_answer\n" + common + data("questions.jsonl")
        + 'output_type: generate_until\ndoc_to_text: "Q: {{question}}\\nA:"\ndoc_to_target: "{{answer}}"\n'
        'generation_kwargs:\n  until: ["\\n", "."]\n  max_gen_toks: 12\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n", encoding="utf-8")
    (folder / "perplexity.yaml").write_text(
        "task: toy_perplexity\n" + common + data("texts.jsonl")
        + 'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny random GPT with GPT-2's vocabulary (a folder gptkit loads), its `gptkit export --format hf` folder, and the tasks."""
    from gptkit_plugins.tokenizers import gpt2_from_files

    vocabulary = gpt2_vocab_dir()
    if vocabulary is None:
        pytest.skip("GPT-2 vocabulary files not found in ../shared/data/gpt2")
    root = tmp_path_factory.mktemp("harness")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50257, context_length=64, emb_dim=32, n_heads=4, n_layers=2, qkv_bias=True))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.1)
    source = save_model(root / "tiny", model, gpt2_from_files(vocabulary))
    exported = subprocess.run([sys.executable, "-m", "gptkit", "export", str(source), str(root / "tiny-hf"), "--format", "hf"],
                              capture_output=True, text=True, timeout=300)
    assert exported.returncode == 0, exported.stderr
    return source, root / "tiny-hf", write_tasks(root / "tasks")


@pytest.fixture(scope="module")
def both(setup):
    """lm-eval's results and samples with the gptkit model and with its hf model on the exported folder."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    torch.set_num_threads(1)
    source, hf_folder, tasks = setup
    ours = evaluate(GptkitLM(str(source), batch_size=3), TASKS, tasks_paths=[tasks], log_samples=True)
    theirs = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={hf_folder},device=cpu,dtype=float32", tasks=TASKS, batch_size=3,
                                     task_manager=TaskManager(include_path=str(tasks)), log_samples=True)
    return ours, theirs


def responses(results, task):
    return [s["resps"] for s in sorted(results["samples"][task], key=lambda s: s["doc_id"])]


def test_every_loglikelihood_equals_hf_within_1e4(both):
    ours, theirs = both
    for task in ("toy_choice", "toy_perplexity"):
        mine, hf = responses(ours, task), responses(theirs, task)
        assert len(mine) == len(hf) == {"toy_choice": len(DOCS), "toy_perplexity": len(TEXTS)}[task]
        for doc_mine, doc_hf in zip(mine, hf):
            assert len(doc_mine) == len(doc_hf)
            for (answer_mine,), (answer_hf,) in zip(doc_mine, doc_hf):
                if task == "toy_choice":  # (log-probability, is greedy)
                    assert answer_mine[0] == pytest.approx(answer_hf[0], abs=1e-4)
                    assert answer_mine[1] == answer_hf[1]
                else:
                    assert answer_mine == pytest.approx(answer_hf, abs=1e-4)


def test_generated_answers_equal_hf(both):
    ours, theirs = both
    mine, hf = responses(ours, "toy_answer"), responses(theirs, "toy_answer")
    assert mine == hf
    assert any(answer[0] for answer in mine)  # not all empty: stop strings and the budget were exercised


def test_aggregated_scores_equal_hf(both):
    ours, theirs = both
    for task in TASKS:
        scores = {k: v for k, v in ours["results"][task].items() if isinstance(v, float)}
        assert scores and scores == pytest.approx({k: theirs["results"][task][k] for k in scores}, abs=1e-4)
    assert ours["results"]["toy_perplexity"]["word_perplexity,none"] > 1


def test_the_long_text_takes_several_rolling_windows(setup):
    from gptkit.sources import load_model

    source, _, _ = setup
    model, tokenizer = load_model(source)
    assert len(tokenizer.encode(TEXTS[0])) > 2 * model.config.context_length


def test_lm_evals_registry_builds_the_model_from_its_arguments(setup):
    from lm_eval.api.registry import get_model

    from gptkit.errors import GptkitError

    source, _, _ = setup
    lm = get_model("gptkit").create_from_arg_string(f"pretrained={source},batch_size=2", {"device": "cpu"})
    assert isinstance(lm, GptkitLM) and lm.batch_size == 2 and lm.max_length == 64
    assert lm.loglikelihood_rolling([type("Request", (), {"args": ("Every effort moves you",)})()])[0] < 0
    with pytest.raises(GptkitError, match="batch_size='auto'"):
        get_model("gptkit").create_from_arg_string(f"pretrained={source},batch_size=auto")


def test_generation_with_a_tokenizer_whose_end_of_text_decodes_to_nothing():
    """The byte tokenizer decodes end-of-text to "": lm-eval then has an empty stop string, which
    must not end the generation at once."""
    import gptkit
    from gptkit.config import Component
    from gptkit.interfaces import Context
    from gptkit.plugins import registry
    from tinymodel import tiny_gpt

    model, tokenizer = tiny_gpt(), registry.tokenizer.build(Component("bytes"), Context())
    lm = GptkitLM(model=model, tokenizer=tokenizer, batch_size=2)
    requests = [type("Request", (), {"args": (context, {"until": ["q"], "max_gen_toks": 20, "do_sample": False})})()
                for context in ("Hello", "A longer context")]
    answers = lm.generate_until(requests)
    expected = [gptkit.generate(model, tokenizer, r.args[0], max_new_tokens=20).split("q")[0] for r in requests]
    assert answers == expected and all(answers)


def gptkit_eval(*args):
    return subprocess.run([sys.executable, "-m", "gptkit", "eval", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **OFFLINE})


@pytest.mark.slow
def test_the_command_prints_lm_evals_table_and_json(setup, both):
    source, _, tasks = setup
    table = gptkit_eval(str(source), "--harness", "toy_choice,toy_answer", "--tasks-path", str(tasks), "--threads", "1")
    assert table.returncode == 0, table.stderr
    assert "|toy_choice" in table.stdout and "|acc_norm" in table.stdout and "|toy_answer" in table.stdout
    limited = gptkit_eval(str(source), "--harness", "toy_choice", "--tasks-path", str(tasks), "--limit", "2", "--json", "--threads", "1")
    assert limited.returncode == 0, limited.stderr
    results = json.loads(limited.stdout)
    assert results["n-samples"]["toy_choice"] == {"original": len(DOCS), "effective": 2}
    assert set(results["results"]["toy_choice"]) >= {"acc,none", "acc_norm,none"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--harness", "toy_choice", "--text", "x.txt"], "give one of --text FILE"),
        (["--text", "x.txt", "--limit", "3"], "--tasks-path, --limit and --batch-size go with --harness"),
        (["--harness", "toy_chioce"], "unknown lm-eval task 'toy_chioce'; did you mean toy_choice"),
    ],
)
def test_harness_usage_errors(setup, args, message):
    source, _, tasks = setup
    result = gptkit_eval(str(source), *args, "--tasks-path", str(tasks)) if "--text" not in args else gptkit_eval(str(source), *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
