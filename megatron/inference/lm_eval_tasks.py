"""lm-evaluation-harness helpers shared by eval.py and tools/lm_eval_sepllm.py.

Both check the task names before loading a model (lm-eval would only fail on them after the load)
and turn lm-eval's failures to reach the Hugging Face Hub into a message that says what to do.
"""
from __future__ import annotations

import os
from typing import Any, Optional

INSTALL_HINT = (
    "lm-evaluation-harness is not installed: pip install -r requirements/requirements-eval.txt "
    "(or pip install 'lm-eval>=0.4.10,<0.5')"
)

OFFLINE_HINT = (
    "lm-eval downloads each task's dataset from the Hugging Face Hub: run where the Hub is reachable, "
    "or with HF_DATASETS_OFFLINE=1 and the datasets already cached, or use --include_path with task "
    "YAML files over local data"
)


def import_lm_eval():
    """(lm_eval, HFLM), or an ImportError that says how to install lm-eval."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return lm_eval, HFLM


def task_manager_for(tasks: list[str], include_path: Optional[str] = None):
    """lm-eval's TaskManager, after checking that every task name (or task YAML path) is known."""
    import_lm_eval()
    from lm_eval.tasks import TaskManager

    if include_path is not None and not os.path.isdir(include_path):
        raise FileNotFoundError(f"--include_path {include_path} is not a directory of task YAML files")
    manager = TaskManager(include_path=include_path)
    unknown = [t for t in tasks if t not in manager.all_tasks and not os.path.isfile(t)]
    if unknown:
        raise ValueError(
            f"unknown lm-eval task(s) {unknown}; `lm-eval list tasks` lists the known ones, "
            "and --include_path DIR adds your own task YAML files"
        )
    return manager


def simple_evaluate(**kwargs: Any) -> dict[str, Any]:
    """lm_eval.simple_evaluate, with an unreachable Hub reported as what to do about it."""
    lm_eval, _ = import_lm_eval()
    try:
        results = lm_eval.simple_evaluate(**kwargs)
    except ConnectionError as exc:
        raise ConnectionError(f"{exc}. {OFFLINE_HINT}") from exc
    if results is None:
        raise RuntimeError("lm-eval returned no results")
    return results
