"""Tasks other than the native HellaSwag, through lm-evaluation-harness (the `slmjobs[eval]` extra,
lm-eval 0.4.13), on a temporary Hugging Face export of the checkpoint (trainer/export.py).

Jobs have no network: HF_HUB_OFFLINE and HF_DATASETS_OFFLINE are set, HF_HOME is a directory of
the evaluation's own unless the caller set one (lm-eval writes a dataset cache), and a task's data
must be local: a task YAML in an --include-path directory pointing at local files (EVAL.md:
`dataset_path: json` with `dataset_kwargs: {data_files: ...}`), or a dataset already in the
HF_HOME cache that a login node filled. write_hellaswag_task() makes lm-eval's own `hellaswag`
task read a local file (as `hellaswag_local`): the equality test and the benchmark score it both
ways.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from trainer.errors import BadInput

LOCAL_HELLASWAG = 'hellaswag_local'
PINNED = '0.4.13'

# lm-eval's tasks/hellaswag/hellaswag.yaml with the hub dataset replaced by a local json file and
# without its `tag:` line (a second task in the same tag makes lm-eval warn).
HELLASWAG_YAML = """task: {task}
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    validation: {data}
output_type: multiple_choice
training_split: null
validation_split: validation
test_split: null
process_docs: !function utils.process_docs
doc_to_text: "{{{{query}}}}"
doc_to_target: "{{{{label}}}}"
doc_to_choice: "choices"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def require_lm_eval():
    try:
        import lm_eval
    except ImportError:
        raise BadInput('lm-evaluation-harness is not installed; allowed: pip install "slmjobs[eval]" '
                       f'(lm-eval {PINNED}), or --tasks hellaswag (the native scorer)') from None
    return lm_eval


def write_hellaswag_task(data: Path, folder: Path) -> Path:
    """An --include-path directory whose `hellaswag_local` task is lm-eval's hellaswag on `data`."""
    lm_eval = require_lm_eval()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f'{LOCAL_HELLASWAG}.yaml').write_text(HELLASWAG_YAML.format(task=LOCAL_HELLASWAG, data=Path(data).absolute()))
    shutil.copy(Path(lm_eval.__file__).parent / 'tasks' / 'hellaswag' / 'utils.py', folder / 'utils.py')
    return folder


def offline_environment(scratch: Path) -> None:
    """No network for lm-eval, transformers or datasets; a cache of this evaluation's own."""
    os.environ['HF_HUB_OFFLINE'] = '1'
    os.environ['HF_DATASETS_OFFLINE'] = '1'
    os.environ['TRANSFORMERS_OFFLINE'] = '1'
    os.environ.setdefault('HF_HOME', str(scratch / 'hf-home'))


def figures(task_results: dict) -> dict:
    """lm-eval's `{"acc,none": .., "acc_stderr,none": ..}` as `{"acc": .., "acc_stderr": ..}`."""
    found = {}
    for key, value in task_results.items():
        metric, _, filter_name = key.partition(',')
        if filter_name == 'none' and isinstance(value, (int, float)):
            found[metric] = value
    return found


def run_lm_eval(model_dir: Path, tasks: list[str], device: str, limit: Optional[int],
                include_path: Optional[Path], log_samples_dir: Optional[Path] = None) -> dict:
    """{task: figures} from lm-eval's simple_evaluate on a Hugging Face model directory."""
    require_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise BadInput(f'--tasks {",".join(unknown)}: lm-eval knows no such task; allowed: hellaswag, '
                       f'an lm-eval task name, or a task of --include-path')
    out = simple_evaluate(model='hf', model_args=f'pretrained={model_dir},dtype=float32', tasks=tasks,
                          device=device, batch_size=8, limit=limit, task_manager=manager,
                          log_samples=log_samples_dir is not None)
    found = {}
    for task in tasks:
        found[task] = {**figures(out['results'][task]), 'n': int(out['n-samples'][task]['effective'])}
    return found


def evaluate(run_dir: Optional[Path], checkpoint: Optional[Path], hf_dir: Optional[Path], tasks: list[str],
             device: str, limit: Optional[int], include_path: Optional[Path] = None) -> dict:
    """{task: figures} for a run's checkpoint (exported to a temporary directory) or a model
    directory."""
    require_lm_eval()
    with tempfile.TemporaryDirectory(prefix='slmjobs-lmeval-') as scratch:
        scratch = Path(scratch)
        offline_environment(scratch)
        model_dir = hf_dir
        if model_dir is None:
            from trainer.export import export
            model_dir = scratch / 'export'
            export(run_dir, model_dir, str(checkpoint))
        return run_lm_eval(model_dir, tasks, device, limit, include_path)
