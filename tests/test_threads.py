"""CPU threads: the automatic count, and --threads of the entry points."""

import argparse
import json
import os

import pytest
import torch
from tiny_runs import ROOT, run_script

from spinn import cli
from spinn.errors import SpinnError

_PROBE = """
import json, os, torch
from spinn import cli
cpus = sorted(os.sched_getaffinity(0))
out = {"default": torch.get_num_threads(), "cpus": len(cpus), "auto": cli.auto_threads()}
torch.set_num_threads(64)  # as torch versions that do not cap their default by the affinity
out["auto_of_64"] = cli.auto_threads()
os.environ["LOCAL_WORLD_SIZE"] = "2"
out["two_local_ranks"] = cli.auto_threads()
os.environ["LOCAL_WORLD_SIZE"] = "1"
os.sched_setaffinity(0, cpus[:1])
out["one_cpu"] = cli.auto_threads()
print(json.dumps(out))
"""


def _probe(omp_threads: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LOCAL_WORLD_SIZE"}
    env |= {"OMP_NUM_THREADS": omp_threads, "PYTHONPATH": str(ROOT)}
    proc = run_script("-c", _PROBE, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this platform")
def test_auto_threads_caps_torch_default_by_the_usable_cpus_shared_among_local_ranks():
    many = _probe("64")
    cpus = many["cpus"]
    assert cpus < 64 and many["auto"] == many["default"] <= cpus
    assert many["auto_of_64"] == cpus
    assert many["two_local_ranks"] == max(1, cpus // 2)
    assert many["one_cpu"] == 1
    one = _probe("1")  # torch's default follows OMP_NUM_THREADS, and so does auto
    assert one["default"] == 1 and one["auto"] == 1


def test_set_threads_sets_and_the_command_restores():
    before = torch.get_num_threads()
    seen = []

    def command(args) -> int:
        seen.append(cli.set_threads(args.threads))
        seen.append(torch.get_num_threads())
        return 0

    def parser() -> argparse.ArgumentParser:
        p = argparse.ArgumentParser()
        p.add_argument("--threads", type=cli.threads_argument, default=None)
        return p

    assert cli.run(parser(), command, ["--threads", "1"]) == 0
    assert cli.run(parser(), command, ["--threads", "auto"]) == 0
    assert seen == [1, 1, cli.auto_threads(), cli.auto_threads()]
    assert torch.get_num_threads() == before
    with pytest.raises(SpinnError, match="threads: expected a count >= 1 .* found 0"):
        cli.set_threads(0)


@pytest.mark.slow
@pytest.mark.parametrize(("script", "value"), [("evaluate", "0"), ("predict", "two")])
def test_evaluate_and_predict_refuse_a_bad_thread_count(script, value):
    proc = run_script(f"scripts/{script}.py", "--checkpoint", "none.pt", "--threads", value)
    assert proc.returncode == 2
    assert f"--threads: expected a count >= 1 or auto, found '{value}'" in proc.stderr
