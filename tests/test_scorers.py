"""Scorers: exact-match's normalising and groups, rouge-l against hand-computed and LCS values,
ollama-judge against a local stand-in for Ollama's /api/chat and against a closed port."""

import http.server
import json
import random
import socket
import sys
import threading

import pytest

from gptkit.config import Component
from gptkit.errors import GptkitError, RegistryError
from gptkit.interfaces import Context, Scorer
from gptkit.plugins import registry


def scorer(name, **params):
    built = registry.scorer.build(Component(name, params), Context())
    assert isinstance(built, Scorer)
    return built


def rec(output, response, **extra):
    return {"instruction": "Do it.", "input": "", "output": output, "model_response": response, **extra}


def test_exact_match_normalises_case_spacing_and_trailing_punctuation():
    records = [rec("tac", " Tac.\n"), rec("The  answer is\n42", "the answer is 42!"), rec("tac", "tca"), rec("a.b", "a b")]
    result = scorer("exact-match")(records)
    assert scorer("exact-match").metric_key == "exact_match"
    assert result == {"mean": 0.5, "n": 4}
    assert scorer("exact-match")([]) == {"mean": None, "n": 0}


def test_exact_match_by_group():
    records = [rec("1", "1", family="add"), rec("ab", "ba", family="sort"), rec("2", "3", family="add"), rec("x", "x", family="sort")]
    result = scorer("exact-match", group_by="family")(records)
    assert result == {"mean": 0.5, "n": 4, "groups": {"add": {"mean": 0.5, "n": 2}, "sort": {"mean": 0.5, "n": 2}}}
    with pytest.raises(GptkitError, match=r"group_by = 'family', but record 1 has no such field"):
        scorer("exact-match", group_by="family")([records[0], rec("a", "a")])


def test_records_need_output_and_model_response():
    with pytest.raises(GptkitError, match=r"record 1 needs a string field 'model_response', got None"):
        scorer("exact-match")([rec("a", "a"), {"instruction": "x", "input": "", "output": "y"}])


@pytest.fixture
def rouge():
    pytest.importorskip("rouge_score", reason="rouge-score is not installed (it is in gptkit[dev])")
    return scorer("rouge-l")


def lcs_f1(reference: str, candidate: str) -> float:
    """ROUGE-L F1 by the textbook dynamic programme, for words that need no tokenizing."""
    ref, cand = reference.split(), candidate.split()
    table = [[0] * (len(cand) + 1) for _ in range(len(ref) + 1)]
    for i, a in enumerate(ref):
        for j, b in enumerate(cand):
            table[i + 1][j + 1] = table[i][j] + 1 if a == b else max(table[i][j + 1], table[i + 1][j])
    lcs = table[-1][-1]
    return 0.0 if lcs == 0 else 2 * lcs / (len(ref) + len(cand))


def test_rouge_l_hand_computed(rouge):
    assert rouge.metric_key == "rouge_l"
    # LCS "the cat on the mat": 5 of 6 words each side
    assert rouge([rec("the cat sat on the mat", "the cat is on the mat")])["mean"] == pytest.approx(5 / 6)
    # LCS "a c": precision 1, recall 1/2
    assert rouge([rec("a b c d", "a c")])["mean"] == pytest.approx(2 / 3)
    assert rouge([rec("Hello, World!", "hello world")])["mean"] == pytest.approx(1.0)
    result = rouge([rec("a b", ""), rec("a b", "a b"), rec("x", "y")])
    assert result == {"mean": pytest.approx(1 / 3), "n": 3}
    grouped = scorer("rouge-l", group_by="family")([rec("a b", "a b", family="f"), rec("a b", "c", family="g")])
    assert grouped["groups"] == {"f": {"mean": 1.0, "n": 1}, "g": {"mean": 0.0, "n": 1}}


def test_rouge_l_is_the_lcs_f1_on_random_texts(rouge):
    rng = random.Random(0)
    words = ["a", "b", "c", "d", "e", "f"]
    for _ in range(200):
        reference = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
        candidate = " ".join(rng.choice(words) for _ in range(rng.randint(0, 12)))
        assert rouge([rec(reference, candidate)])["mean"] == pytest.approx(lcs_f1(reference, candidate)), (reference, candidate)


def test_rouge_l_without_the_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "rouge_score", None)  # makes `import rouge_score` fail
    with pytest.raises(GptkitError, match=r"scorer 'rouge-l' needs the rouge-score package: pip install rouge-score"):
        scorer("rouge-l")


# --- ollama-judge -----------------------------------------------------------------------------------

PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."


@pytest.fixture
def ollama():
    """A stand-in for Ollama on 127.0.0.1: answers /api/chat with the queued replies
    ((status, body) pairs), recording each request's headers and JSON."""
    replies, requests = [], []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            requests.append((self.path, self.headers["Content-Type"], json.loads(body)))
            status, reply = replies.pop(0)
            data = reply.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", replies, requests
    server.shutdown()


def chat(content):
    return 200, json.dumps({"model": "llama3", "message": {"role": "assistant", "content": content}, "done": True})


def test_judge_asks_as_the_original_and_averages_the_integers(ollama):
    url, replies, requests = ollama
    records = [
        {"instruction": "Rewrite the sentence.", "input": "The car is fast.", "output": "The car is very fast.", "model_response": "The car is quick."},
        rec("Blue.", "Red."),
        rec("4", "4"),
        rec("x", "y"),
    ]
    replies += [chat("85"), chat(" 10.\n"), chat("I would give it 90"), chat("100")]
    judge = scorer("ollama-judge", url=url + "/", model="judge-model")
    assert judge.metric_key == "judge_score"
    assert judge(records) == {"mean": pytest.approx(65.0), "n": 3, "unparsable": 1}
    path, content_type, body = requests[0]
    assert (path, content_type) == ("/api/chat", "application/json")
    prompt = (
        f"Given the input `{PREAMBLE}\n\n### Instruction:\nRewrite the sentence.\n\n### Input:\nThe car is fast.` "
        "and correct output `The car is very fast.`, score the model response `The car is quick.` "
        "on a scale from 0 to 100, where 100 is the best score. Respond with the integer number only."
    )
    assert body == {
        "model": "judge-model",
        "messages": [{"role": "user", "content": prompt}],
        "options": {"seed": 123, "temperature": 0, "num_ctx": 2048},
        "stream": False,
    }
    assert requests[1][2]["messages"][0]["content"].startswith(f"Given the input `{PREAMBLE}\n\n### Instruction:\nDo it.` and")


def test_judge_reads_a_streamed_answer_and_skips_scores_out_of_range(ollama):
    url, replies, _ = ollama
    streamed = "\n".join(json.dumps({"message": {"content": part}}) for part in ("4", "2", "")) + "\n"
    replies += [(200, streamed), chat("150"), chat("-3")]
    assert scorer("ollama-judge", url=url)([rec("a", "b")] * 3) == {"mean": 42.0, "n": 1, "unparsable": 2}


def test_judge_url_must_be_http():
    with pytest.raises(RegistryError, match=r"'url' must be an http\(s\) address such as http://localhost:11434, got 'localhost:11434'"):
        scorer("ollama-judge", url="localhost:11434")


def test_judge_server_down_returns_an_error_line_naming_the_url():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = scorer("ollama-judge", url=f"http://127.0.0.1:{port}")([rec("a", "b")] * 2)
    assert result["mean"] is None and result["n"] == 0 and result["unparsable"] == 0
    error = result["error"]
    assert f"http://127.0.0.1:{port}/api/chat" in error and "Connection refused" in error and "\n" not in error
    assert "after 0 of 2 records" in error and "ollama serve" in error


def test_judge_error_midway_keeps_the_scores_so_far_and_the_servers_reason(ollama):
    url, replies, _ = ollama
    replies += [chat("70"), (404, json.dumps({"error": "model 'llama3' not found, try pulling it first"}))]
    result = scorer("ollama-judge", url=url)([rec("a", "b")] * 3)
    assert result["mean"] == 70.0 and result["n"] == 1
    assert "after 1 of 3 records: HTTP 404: model 'llama3' not found, try pulling it first" in result["error"]
    replies += [(200, "<html>not ollama</html>")]
    result = scorer("ollama-judge", url=url)([rec("a", "b")])
    assert result["n"] == 0 and "the answer is not Ollama's chat JSON: '<html>not ollama</html>'" in result["error"]
