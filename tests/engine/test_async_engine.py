from __future__ import annotations

import asyncio

import pytest

from engine import AsyncEngine, EngineConfig, SamplingParams
from tests.engine.helpers import assert_no_leaks


@pytest.fixture
async def engine(tiny_model_dir):
    eng = AsyncEngine(EngineConfig(model=tiny_model_dir, num_kv_blocks=128, block_size=4))
    await eng.start()
    yield eng
    await eng.shutdown()


async def _collect(eng, prompt, params, rid):
    outs = [o async for o in eng.generate(prompt, params, rid)]
    return outs


async def test_streams_cumulative_outputs_and_matches_offline(engine, tiny_model_dir):
    from engine import LLM

    p = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    outs = await _collect(engine, "def f():", p, "a")
    assert outs[-1].finished and not any(o.finished for o in outs[:-1])
    lengths = [len(o.outputs[0].token_ids) for o in outs]
    assert lengths == sorted(lengths) and lengths[-1] == 12
    offline = LLM(tiny_model_dir, num_kv_blocks=128, block_size=4).generate(["def f():"], p)
    assert outs[-1].outputs[0].token_ids == offline[0].outputs[0].token_ids


async def test_concurrent_requests_and_bad_request_fail_alone(engine):
    p = SamplingParams(temperature=0.7, max_tokens=10, seed=3, n=2)
    good = [asyncio.create_task(_collect(engine, f"x{i} =", p, f"r{i}")) for i in range(4)]
    with pytest.raises(ValueError, match="empty"):
        await _collect(engine, "", p, "bad")
    results = await asyncio.gather(*good)
    assert all(r[-1].finished for r in results)
    await asyncio.sleep(0.05)
    assert_no_leaks(engine.engine)


async def test_consumer_leaving_aborts_and_frees_blocks(engine):
    p = SamplingParams(max_tokens=200, ignore_eos=True)
    async for out in engine.generate("import os", p, "leaver"):
        if len(out.outputs[0].token_ids) >= 3:
            break
    for _ in range(100):
        if not engine.engine.requests:
            break
        await asyncio.sleep(0.02)
    assert_no_leaks(engine.engine)


async def test_event_loop_is_not_blocked_by_steps(engine):
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    t = asyncio.create_task(ticker())
    await _collect(engine, "def g():", SamplingParams(max_tokens=40, ignore_eos=True), "t")
    t.cancel()
    assert ticks > 10


async def test_a_step_that_raises_fails_only_its_own_requests(tiny_model_dir):
    engine = AsyncEngine(EngineConfig(model=tiny_model_dir, num_kv_blocks=128, block_size=4, max_num_seqs=1))
    execute = engine.engine.runner.execute

    def flaky(out, *fed):
        if any(s.seq.request_id == "doomed" for s in out.scheduled):
            raise RuntimeError("injected")
        return execute(out, *fed)

    engine.engine.runner.execute = flaky
    params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)

    async def run(request_id: str):
        outs = [o async for o in engine.generate("def f(x):", params, request_id)]
        return outs[-1].outputs[0].token_ids

    try:
        # One sequence runs at a time: "ok" waits while "doomed" fails, then runs to the end.
        results = await asyncio.gather(run("doomed"), run("ok"), return_exceptions=True)
        assert isinstance(results[0], RuntimeError) and "injected" in str(results[0])
        assert len(results[1]) == 6
        assert engine.stats().num_blocks_free == engine.stats().num_blocks_total
    finally:
        await engine.shutdown()


async def test_the_engine_steps_on_while_the_event_loop_is_busy_and_a_late_reader_gets_the_latest(engine):
    """The engine's thread never waits on the event loop: while the loop is held (a consumer's
    synchronous work, hundreds of streams' sockets) the request runs to its end, and its consumer
    then reads the latest output, the whole of what it missed in one."""
    import time

    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    seen = []
    async for out in engine.generate("def f():", params, "late"):
        seen.append(out)
        if len(seen) == 1:
            deadline = time.monotonic() + 30
            while engine.engine.has_unfinished() and time.monotonic() < deadline:
                time.sleep(0.01)  # holds the event loop
            assert not engine.engine.has_unfinished()
    assert len(seen) == 2 and seen[-1].finished and len(seen[-1].outputs[0].token_ids) == 40
    assert_no_leaks(engine.engine)


async def test_a_dead_engine_thread_fails_every_stream_and_every_later_request(tiny_model_dir):
    """Should the engine's thread itself stop (outside a step, which fails only its requests), no
    stream waits forever: each ends with EngineDeadError, as does every request after it."""
    from engine.async_engine import EngineDeadError

    engine = AsyncEngine(EngineConfig(model=tiny_model_dir, num_kv_blocks=128, block_size=4))

    def broken():
        raise RuntimeError("the thread broke")

    engine._step = broken
    try:
        with pytest.raises(EngineDeadError, match="the thread broke"):
            await asyncio.wait_for(_collect(engine, "def f():", SamplingParams(max_tokens=4), "a"), 30)
        with pytest.raises(EngineDeadError, match="stopped"):
            await _collect(engine, "def f():", SamplingParams(max_tokens=4), "b")
    finally:
        await engine.shutdown()
