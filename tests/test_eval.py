"""eval.py: lm-evaluation-harness on our checkpoint (a tiny local task), or a clear install hint."""
from __future__ import annotations

import json
import sys

import pytest
import torch
import yaml

from test_convert_fixtures import NEOX, make_tokenizer, save_checkpoint_of, sepllm, write_config
from test_convert_fixtures import restore_environ  # noqa: F401 (autouse: undoes init_distributed's environment)

import eval as eval_script

DOCS = [
    {"question": "The quick brown", "choices": [" fox", " dog", " up"], "answer": 0},
    {"question": "It was a bright cold day in April, and the clocks were", "choices": [" striking", " masked"], "answer": 0},
    {"question": "Was it? Yes; maybe:", "choices": [" later", " the", " Each query"], "answer": 2},
    {"question": "Separators soak up attention: commas, periods, question marks and", "choices": [" newlines", " rule"], "answer": 1},
]

TASK = {
    "task": "tiny_sepllm",
    "dataset_path": "json",
    "test_split": "test",
    "output_type": "multiple_choice",
    "doc_to_text": "{{question}}",
    "doc_to_choice": "{{choices}}",
    "doc_to_target": "{{answer}}",
    "target_delimiter": "",  # the choices carry their own leading space
    "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval")
    vocab = make_tokenizer(folder / "tok")
    config = write_config(folder / "cfg.yml", vocab, folder / "save", **NEOX, **sepllm(3),
                          eval_results_prefix=str(folder / "run"))
    _, model = save_checkpoint_of(config, seed=21)
    return folder, model, config


def test_missing_lm_eval_says_how_to_install(run, monkeypatch):
    _, _, config = run
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(ImportError, match="pip install"):
        eval_script.main([str(config), "--eval_tasks", "lambada_openai"])


def _log_likelihood(model, tokenizer, context: str, continuation: str) -> float:
    # lm-eval's split: encode the whole string, the continuation is what follows the context's tokens.
    whole = tokenizer(context + continuation)["input_ids"]
    n_context = len(tokenizer(context)["input_ids"])
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([whole[:-1]]))[0].float(), -1)
    return float(sum(logp[i - 1, whole[i]] for i in range(n_context, len(whole))))


def test_tiny_local_task_scores_our_model(run, monkeypatch):
    pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -r requirements/requirements-eval.txt)")
    from megatron.checkpointing.export import hf_tokenizer
    from megatron.neox_arguments import NeoXArgs

    folder, model, config = run
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tasks = folder / "tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (tasks / "tiny.yaml").write_text(yaml.safe_dump({**TASK, "dataset_kwargs": {"data_files": {"test": str(tasks / "docs.jsonl")}}}))

    from lm_eval.models.huggingface import HFLM

    scored, original = {}, HFLM._loglikelihood_tokens

    def recording(self, requests, *args, **kwargs):  # requests: ((context, continuation), ids, ids)
        out = original(self, requests, *args, **kwargs)
        scored.update({pair: ll for (pair, _, _), (ll, _) in zip(requests, out)})
        return out

    monkeypatch.setattr(HFLM, "_loglikelihood_tokens", recording)
    summary = eval_script.main([str(config), "--eval_tasks", "tiny_sepllm", "--include_path", str(tasks)])
    tokenizer = hf_tokenizer(NeoXArgs.from_files([str(config)]).tokenizer)
    ours = [[_log_likelihood(model, tokenizer, d["question"], c) for c in d["choices"]] for d in DOCS]
    # Every score lm-eval used is our model's, under its SepLLM mask (not only the argmax).
    assert len(scored) == sum(len(d["choices"]) for d in DOCS), list(scored)
    for d, lls in zip(DOCS, ours):
        for c, ll in zip(d["choices"], lls):
            assert scored[(d["question"], c)] == pytest.approx(ll, rel=1e-4, abs=1e-4), (d["question"], c)
    picks = [max(range(len(lls)), key=lls.__getitem__) for lls in ours]
    expected = sum(p == d["answer"] for p, d in zip(picks, DOCS)) / len(DOCS)
    assert summary["results"]["tiny_sepllm"]["acc,none"] == pytest.approx(expected)
    assert 0 < summary["sepllm"]["attn_map_ratio"] < 1
    written = json.loads((folder / "run_eval_results.json").read_text())
    assert written["results"]["tiny_sepllm"]["acc,none"] == pytest.approx(expected)


def test_deepy_passes_eval_options_to_eval_py(run, tmp_path):
    """`python deepy.py eval.py CONFIG --eval_tasks ... --include_path ...`, as GPT-NeoX users run it."""
    pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install -r requirements/requirements-eval.txt)")
    import os
    import subprocess
    from pathlib import Path

    from megatron.parallel.distributed import free_port

    folder, _, config = run
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (tasks / "tiny.yaml").write_text(yaml.safe_dump({**TASK, "dataset_kwargs": {"data_files": {"test": str(tasks / "docs.jsonl")}}}))
    settings = yaml.safe_load(Path(config).read_text())
    mine = tmp_path / "cfg.yml"
    mine.write_text(yaml.safe_dump({**settings, "eval_results_prefix": str(tmp_path / "deepy"), "master_port": free_port()}))
    root = Path(eval_script.__file__).resolve().parent
    proc = subprocess.run([sys.executable, str(root / "deepy.py"), str(root / "eval.py"), str(mine), "--eval_tasks",
                           "tiny_sepllm", "--include_path", str(tasks), "--limit", "2"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    written = json.loads((tmp_path / "deepy_eval_results.json").read_text())
    assert "tiny_sepllm" in written["results"] and written["results"]["tiny_sepllm"]["acc,none"] in (0.0, 0.5, 1.0)
