"""submitit on slmjobs: a Checkpointable that counts to N, one a second, over as many links as its
walltime needs. At each link's deadline submitit calls checkpoint() (Checkpointable's own: it
resubmits the callable with the steps done so far), the link hands off, and the next link
continues; job.result() waits across all of them.

    python examples/submitit_count.py --folder jobs --cluster local --target 90

(`pip install slmjobs[submitit]`; `--cluster` names a slmjobs cluster profile, e.g. scc.)
"""

import argparse
import json
import os
import time

import submitit


class Count(submitit.helpers.Checkpointable):
    def __init__(self, target: int):
        self.target = target
        self.steps = []  # [step, link] for every step done: the state checkpoint() passes on

    def __call__(self) -> list:
        while len(self.steps) < self.target:
            time.sleep(1)  # one step of work
            # One append: submitit's checkpoint sees the step done or not done, never half
            self.steps.append([len(self.steps) + 1, os.environ.get("SLMJOBS_LINK")])
        return self.steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folder", default="submitit-jobs")
    parser.add_argument("--cluster", default="local")
    parser.add_argument("--target", type=int, default=90)
    args = parser.parse_args()

    executor = submitit.AutoExecutor(args.folder, cluster="slmjobs")
    executor.update_parameters(timeout_min=1, cpus_per_task=1, name="count",
                               slmjobs_cluster=args.cluster)
    job = executor.submit(Count(args.target))
    print(f"submitted run {job.job_id}: slmjobs status {job.job_id}", flush=True)
    steps = job.result()
    links = sorted({link for _, link in steps})
    print(json.dumps({"job_id": job.job_id, "state": job.state, "steps": steps, "links": links}))


if __name__ == "__main__":
    main()
