"""benchmarks/long_streams.py: two engines, one taking every output and one the finished only,
step the same streams in turn; the outputs' cost is their difference, by quarter of the length."""
from __future__ import annotations

import long_streams
from engine.llm_engine import LLMEngine


def test_both_engines_run_every_stream_to_its_length_taking_outputs_as_they_say(monkeypatch, tmp_path):
    taken: dict[str, int] = {"all": 0, "finished": 0}
    step = LLMEngine.step

    def counting(self, collect="all"):
        outputs = step(self, collect)
        taken[collect] += len(outputs)
        return outputs

    monkeypatch.setattr(LLMEngine, "step", counting)
    results = long_streams.main(["--streams", "3", "--tokens", "24", "--out", str(tmp_path)])
    row = results["row"]
    assert taken["finished"] == 3 and taken["all"] >= 3 * 24  # every stream every step, or its end only
    assert len(row["outputs_ms"]) == long_streams.QUARTERS and all(ms > 0 for ms in row["step_ms"]["all"])
    assert row["outputs_ms"] == [a - f for a, f in zip(row["step_ms"]["all"], row["step_ms"]["finished"])]
    assert (tmp_path / "long_streams_{}.md".format(long_streams.measure.stamp(results["date"]))).exists()
