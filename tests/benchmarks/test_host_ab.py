"""benchmarks/host_ab.py: methods switch between another checkout's and this one's every block of
steps of one engine run, each variant's steps are timed apart, and this checkout's come back."""
from __future__ import annotations

import sys

import host_ab
from engine.scheduler import Scheduler
from engine.tokenizer import Tokenizer
from engine import DEFAULT_MODEL
from tests.benchmarks.test_host_overhead import _requests


def test_each_variant_runs_its_own_methods_in_alternate_blocks(tmp_path):
    base = tmp_path / "base" / "engine"
    base.mkdir(parents=True)
    # The base's postprocess counts its calls in a global of its own module, then does the work.
    base.joinpath("scheduler.py").write_text(
        "from engine.scheduler import Scheduler as _New\n"
        "_ORIGINAL = _New.__dict__['postprocess']\n"
        "CALLS = 0\n\n\n"
        "class Scheduler:\n"
        "    def postprocess(self, out, result):\n"
        "        global CALLS\n"
        "        CALLS += 1\n"
        "        return _ORIGINAL(self, out, result)\n")
    chosen = host_ab.swaps(str(tmp_path / "base"), ["engine.scheduler:Scheduler.postprocess"])
    new = Scheduler.__dict__["postprocess"]
    tokenizer = Tokenizer(DEFAULT_MODEL)
    times = host_ab.run(4, False, chosen, blocks=4, block=3, warmup=2, requests=_requests(tokenizer),
                        tokenizer=tokenizer)
    assert len(times["base"]) == len(times["new"]) == 6
    assert all(t > 0 for t in times["base"] + times["new"])
    base_module = sys.modules["_base_engine_scheduler"]
    assert base_module.CALLS == 6  # the base's steps, and only those, ran its method
    assert Scheduler.__dict__["postprocess"] is new
