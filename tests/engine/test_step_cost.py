"""The step cost the engine learns from its own steps, and the file that keeps it between runs."""
from __future__ import annotations

import json
import random

import pytest

from engine import LLM
from engine.step_cost import ROW_GRID, SEQ_GRID, WINDOW, CostKey, StepCost, bucket_of

KEY = CostKey("m", "cpu", "float32", 2, "cpu", "k1")


def test_grids_step_by_at_most_one_and_a_half():
    for grid in (SEQ_GRID, ROW_GRID[1:]):
        assert grid[0] == 1 and all(b <= 1.5 * a + 1 for a, b in zip(grid, grid[1:]))
    assert [bucket_of(SEQ_GRID, x) for x in (1, 5, 6, 7, 300)] == [0, 3, 4, 4, SEQ_GRID.index(256)]


def test_estimates_are_a_low_quantile_so_interference_does_not_count():
    cost = StepCost()
    for i in range(WINDOW):
        cost.observe(8, 0, 10.0 if i % 4 else 30.0)  # a quarter of the steps disturbed
    assert cost.plain(8) == pytest.approx(10.0)
    for _ in range(WINDOW // 4 + 1):  # the machine got faster: a quarter of a window follows it
        cost.observe(8, 0, 5.0)
    assert cost.plain(8) == pytest.approx(5.0)
    cost.observe(4, 4, 50.0)
    cost.observe(4, 4, 7.0)  # one fresh fast step corrects a stale slow one in a bucket seldom seen
    assert cost.extra(4, 4) == pytest.approx(7.0 - 5.0)  # over the plain step of 8, the nearest known


def test_extra_rows_cost_the_difference_to_the_plain_step():
    cost = StepCost()
    cost.observe(16, 0, 10.0)
    cost.observe(16, 16, 14.0)
    cost.observe(16, 48, 22.0)
    assert cost.extra(16, 0) == 0.0
    assert cost.extra(16, 16) == pytest.approx(4.0)
    assert cost.extra(16, 32) == pytest.approx(8.0)  # between measured sizes: linear
    assert cost.extra(16, 96) == pytest.approx(22.0 + 0.25 * 48 - 10.0)  # past them: at the last slope


def test_past_the_largest_measured_draft_one_noisy_size_is_not_magnified():
    """Draft rows cost 0.25 each; the step with 24 of them ran busy (9 over the plain step, not
    6). Past it the extra rises no steeper than the line from no rows through that last size, so
    the error at 96 rows stays the last size's own (1.5x), not its segment's slope times 72 rows."""
    cost = StepCost()
    cost.observe(16, 0, 10.0)
    cost.observe(16, 16, 14.0)
    cost.observe(16, 24, 19.0)
    assert cost.extra(16, 96) == pytest.approx(9.0 * 96 / 24)
    flatter = StepCost()  # a cost that flattens with more rows keeps its last segment's slope
    flatter.observe(16, 0, 10.0)
    flatter.observe(16, 16, 18.0)
    flatter.observe(16, 48, 22.0)
    assert flatter.extra(16, 96) == pytest.approx(12.0 + 0.125 * 48)
    falling = StepCost()  # a segment that falls (a noisy last size): half the mean slope, not free rows
    falling.observe(16, 0, 10.0)
    falling.observe(16, 16, 22.0)
    falling.observe(16, 24, 20.0)
    assert falling.extra(16, 120) == pytest.approx(10.0 + 10.0 / 24 / 2 * 96)


def test_a_drafting_step_is_set_against_the_plain_steps_just_before_it():
    """The machine got twice as slow (load, longer contexts) a few steps ago; a drafting step
    costs 2 more than the plain steps of its time. Against the window's low quantile, still
    from before the change, its rows would read as costing 12."""
    cost = StepCost()
    for _ in range(WINDOW - 3):
        cost.observe(8, 0, 10.0)
    for _ in range(3):
        cost.observe(8, 0, 20.0)
    cost.observe(8, 8, 22.0)
    assert cost.plain(8) == pytest.approx(10.0) and cost.extra(8, 8) == pytest.approx(2.0)


def test_draft_costs_measured_where_no_plain_step_ran_count():
    """A batch that drafts at every step of its size (the tail of a job) never runs a plain step
    there: its drafting steps, set against the plain cost read off nearby batches, are what its
    draft rows cost, not those of a batch twice as large (1.5)."""
    cost = StepCost()
    cost.observe(16, 0, 16.0)
    cost.observe(24, 0, 24.0)
    cost.observe(16, 15, 16.0 + 1.5)  # drafts were cheap at 16
    cost.observe(8, 15, 8.0 + 11.0)  # and dear at 8
    assert cost.plain(8) is not None and cost._at(bucket_of(SEQ_GRID, 8), 0) is None
    assert cost.extra(8, 15) == pytest.approx(8.0 + 11.0 - cost.plain(8))


def test_unknown_shapes_are_unknown_unless_a_plain_step_of_as_many_rows_was_seen():
    cost = StepCost()
    assert cost.plain(4) is None and cost.extra(4, 4) is None
    cost.observe(4, 0, 2.0)
    assert cost.extra(4, 4) is None and not cost.observed(4, 4)
    cost.observe(8, 0, 3.0)
    assert cost.extra(4, 4) == pytest.approx(1.0)  # 4 sequences + 4 rows read like 8 sequences
    cost.observe(192, 0, 100.0)
    cost.observe(256, 0, 120.0)
    # 181 rows at 192 sequences read as 181 more sequences (at the plain cost's slope from 192 to
    # 256, the most measured up to 373), not as the 64 more that the grid point below 373 holds.
    assert cost.extra(192, 181) == pytest.approx(20.0 / 64 * 181)


def test_beside_queued_plain_steps_rows_are_not_read_as_sequences():
    """With overlapped steps a plain step's cost hides the host's work, and a drafting step (never
    queued ahead) pays it: draft rows are read off drafting steps only, here at 256 sequences."""
    cost = StepCost(CostKey("m", "cuda", "bfloat16", 16, "triton", "none", overlap=True))
    cost.observe(192, 0, 24.0)
    cost.observe(256, 0, 25.0)
    assert cost.extra(192, 64) is None  # not 1.0: the queued plain steps' slope
    cost.observe(256, 64, 25.0 + 8.0)
    assert cost.extra(192, 64) == pytest.approx(8.0)
    assert StepCost(KEY).key.file_name() != cost.key.file_name()


def test_the_overlap_a_search_forgoes_is_what_a_plain_step_not_queued_ahead_costs_more():
    """Plain steps run without being queued ahead (after a search, after drafts) are kept apart:
    what they cost beyond queued ones is the overlap a search forgoes, at the nearest batch within
    2x that measured both; nothing known reads 0.0, and they never price plain steps."""
    cost = StepCost(CostKey("m", "cuda", "bfloat16", 16, "triton", "none", overlap=True))
    assert cost.forgone(256) == 0.0
    cost.observe_sync(256, 29.0)
    assert cost.forgone(256) == 0.0 and cost.plain(256) is None  # no queued step to set it against
    cost.observe(256, 0, 25.0)
    assert cost.forgone(256) == pytest.approx(4.0) and cost.plain(256) == pytest.approx(25.0)
    assert cost.forgone(150) == pytest.approx(4.0)  # the nearest within 2x
    assert cost.forgone(64) == 0.0
    for _ in range(WINDOW):
        cost.observe_sync(256, 24.0)  # a sync step that read cheaper (noise): no overlap is worth less than none
    assert cost.forgone(256) == 0.0


def test_the_plain_steps_slope_is_not_carried_far_past_the_most_sequences_measured():
    """On a CPU plain steps can cost about the same from 128 to 192 sequences and rise only past
    that, where each draft row adds a tenth of a plain step. The flat slope carried to 128 + 400
    would make 400 rows at 128 sequences nearly free (3.1); the rows measured at 192 say 40."""
    cost = StepCost()
    cost.observe(128, 0, 24.0)
    cost.observe(192, 0, 24.5)
    assert cost.extra(128, 64) == pytest.approx(0.5)  # up to 192: read off the plain steps
    assert cost.extra(128, 400) is None
    cost.observe(192, 128, 24.5 + 12.8)
    assert cost.extra(128, 400) == pytest.approx(12.8 + 0.1 * (400 - 128))


def test_plain_steps_that_do_not_rise_do_not_make_rows_free():
    cost = StepCost()
    cost.observe(128, 0, 31.0)
    cost.observe(192, 0, 27.0)  # noise: fewer sequences read dearer
    assert cost.extra(128, 64) is None  # unknown: the policy explores


def test_plain_steps_seeded_by_another_run_do_not_price_draft_rows(tmp_path):
    """The file says steps of 192 sequences cost 98 and of 256 cost 87 (written at two moments of
    a busy machine); this run has measured only 256. Rows at 192 are unknown (the policy explores),
    not free."""
    first = StepCost(KEY, str(tmp_path))
    first.observe(192, 0, 98.0)
    first.observe(256, 0, 87.0)
    first.save()
    second = StepCost(KEY, str(tmp_path))
    second.observe(256, 0, 87.0)
    assert second.plain(192) == pytest.approx(98.0) and second.extra(192, 181) is None


def test_nearby_batches_stand_in_for_an_unmeasured_one():
    cost = StepCost()
    cost.observe(4, 0, 2.0)
    cost.observe(8, 0, 4.0)
    assert cost.plain(6) == pytest.approx(3.0)  # between measured batches
    assert cost.plain(12) == pytest.approx(4.0)  # the nearest within 2x
    assert cost.plain(32) is None  # nothing within 2x
    cost.observe(8, 8, 5.0)
    assert cost.extra(12, 8) == pytest.approx(1.0)  # draft rows cost about the same at 8 and 12 sequences
    assert cost.extra(64, 8) is None


def test_small_batches_read_draft_rows_from_any_small_batch():
    """A step of a few sequences reads the weights whatever it carries: what a draft row costs at
    one sequence stands in at four (and the nearest small batch comes first), not at sixteen."""
    cost = StepCost()
    for n, seconds in ((1, 2.0), (4, 2.2), (16, 3.0)):
        cost.observe(n, 0, seconds)
    cost.observe(1, 4, 2.5)
    assert cost.extra(4, 4) == pytest.approx(0.5)
    assert cost.extra(16, 4) is None
    cost.observe(2, 0, 2.1)
    cost.observe(2, 4, 2.4)
    assert cost.extra(4, 4) == pytest.approx(0.3)  # the nearest small batch first


def test_what_was_learned_is_kept_per_key_and_gives_way_to_new_observations(tmp_path):
    first = StepCost(KEY, str(tmp_path))
    first.observe(1, 0, 0.5)
    first.observe(1, 8, 0.6)
    first.save()
    data = json.loads((tmp_path / KEY.file_name()).read_text())
    assert data["key"] == repr(KEY)
    second = StepCost(KEY, str(tmp_path))
    assert second.plain(1) == pytest.approx(0.5) and second.extra(1, 8) == pytest.approx(0.1)
    second.observe(1, 0, 0.4)
    assert second.plain(1) == pytest.approx(0.4)
    other = StepCost(CostKey("m", "cpu", "float32", 1, "cpu", "k1"), str(tmp_path))  # another thread count
    assert other.plain(1) is None
    (tmp_path / KEY.file_name()).write_text("{torn")
    assert StepCost(KEY, str(tmp_path)).plain(1) is None  # a torn file: start from nothing


def test_a_run_that_keeps_nothing_reads_the_file_and_leaves_it_as_it_was(tmp_path):
    first = StepCost(KEY, str(tmp_path))
    first.observe(1, 0, 0.5)
    first.save()
    before = (tmp_path / KEY.file_name()).read_text()
    loaded = StepCost(KEY, str(tmp_path))
    loaded.keep_nothing()
    assert loaded.plain(1) == pytest.approx(0.5)  # seeded all the same
    for _ in range(3):
        loaded.observe(1, 0, 0.9)  # slow steps beside other work
    loaded.save()
    loaded.flush()
    assert loaded.plain(1) == pytest.approx(0.9) and (tmp_path / KEY.file_name()).read_text() == before


def test_the_engine_learns_from_decode_steps_and_can_sweep_at_start_up(tiny_model_dir):
    llm = LLM(tiny_model_dir, num_kv_blocks=64, block_size=4, max_num_batched_tokens=64, max_num_seqs=16)
    from engine import SamplingParams

    llm.generate(["def f(x):"], SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True))
    assert llm.engine.step_cost.plain(1) > 0 and llm.engine.step_cost.observations == 9  # the prefill step not
    swept = LLM(tiny_model_dir, num_kv_blocks=64, block_size=4, max_num_batched_tokens=64, max_num_seqs=16,
                cost_sweep=True)
    cost = swept.engine.step_cost
    assert cost.plain(16) > 0 and cost.extra(1, 15) is not None and cost.extra(8, 8) is not None


def test_a_write_keeps_what_another_engine_wrote_since_this_one_read_the_file(tmp_path):
    """Two engines read the file before either learned anything (the two types of an interleaved
    benchmark, a server beside a job): the one that writes last keeps the other's cells, and its
    own live cells win over what the file holds."""
    plain, drafting = StepCost(KEY, str(tmp_path)), StepCost(KEY, str(tmp_path))
    drafting.observe(8, 0, 10.0)
    drafting.observe(8, 8, 14.0)
    drafting.save()
    plain.observe(8, 0, 11.0)
    plain.observe(16, 0, 20.0)
    plain.save()
    again = StepCost(KEY, str(tmp_path))
    assert again.plain(8) == pytest.approx(11.0) and again.plain(16) == pytest.approx(20.0)
    assert again._at(bucket_of(SEQ_GRID, 8), bucket_of(ROW_GRID, 8)) == pytest.approx(4.0)


def test_the_engine_keeps_what_a_short_job_taught_when_it_runs_out_of_work(tiny_model_dir, tmp_path, monkeypatch):
    """A job of fewer steps than a periodic write waits for still writes the file when it ends."""
    monkeypatch.setenv("FASTCODELLAMA_STEP_COST_DIR", str(tmp_path))
    from engine import SamplingParams

    llm = LLM(tiny_model_dir, num_kv_blocks=64, block_size=4, max_num_batched_tokens=64, max_num_seqs=16)
    llm.generate(["def f(x):"], SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True))
    again = StepCost(llm.engine.step_cost.key, str(tmp_path))
    assert again.plain(1) == pytest.approx(llm.engine.step_cost.plain(1))


def test_a_seeded_draft_cost_is_read_against_the_plain_cost_it_was_seeded_beside(tmp_path):
    """The file was written on a quiet machine (plain 10, with 8 draft rows 12); now plain steps
    take 20: draft rows cost their old share (20%) of the live plain step, not nothing."""
    first = StepCost(KEY, str(tmp_path))
    first.observe(8, 0, 10.0)
    first.observe(8, 8, 12.0)
    first.save()
    second = StepCost(KEY, str(tmp_path))
    assert second.extra(8, 8) == pytest.approx(2.0)  # all seeded: as written
    for _ in range(WINDOW):
        second.observe(8, 0, 20.0)
    assert second.extra(8, 8) == pytest.approx(4.0)
    second.observe(8, 8, 21.0)  # a live drafting step: no scaling any more
    assert second.extra(8, 8) == pytest.approx(1.0)


def test_a_seeded_plain_cost_this_run_never_measured_is_scaled_like_its_nearest_measured_one(tmp_path):
    """An earlier workload's file says 48 sequences cost 18 and 64 cost 23; this one's steps of 64
    cost 9. Its policy, counting 60 decoding sequences while newcomers join each step as the 64th,
    reads the plain step of 48-63 (never measured in this run) at the same ratio, not as 18: else
    every draft row looks cheap beside it. A seeded drafting cell is not scaled down: a draft
    row's cost follows the plain step's far less across workloads."""
    first = StepCost(KEY, str(tmp_path))
    first.observe(48, 0, 18.0)
    first.observe(48, 16, 18.0 + 2.0)
    first.observe(64, 0, 23.0)
    first.save()
    second = StepCost(KEY, str(tmp_path))
    assert second.plain(60) == pytest.approx(18.0)  # nothing live yet: as seeded
    second.observe(64, 0, 9.0)
    assert second.plain(60) == pytest.approx(18.0 * 9.0 / 23.0)
    assert second.extra(60, 16) == pytest.approx(2.0)


def test_plain_steps_count_as_measured_once_this_run_has_seen_some_of_about_as_many_sequences(tmp_path):
    """A file's plain costs are read (seeded), but not measured: the policy drafts against plain steps
    of this run only, within 2x of the batch."""
    first = StepCost(KEY, str(tmp_path))
    first.observe(192, 0, 80.0)
    first.save()
    second = StepCost(KEY, str(tmp_path))
    assert second.plain(200) == pytest.approx(80.0) and not second.measured(200)
    second.observe(128, 0, 25.0)
    assert second.measured(200) and second.measured(64) and not second.measured(32)


def test_answers_kept_between_observations_are_what_a_fresh_reading_gives(tmp_path):
    """The estimates are kept until an observation changes one: after every observation of a
    random run (seeded buckets turning live included), each answer equals a reading that keeps
    nothing."""
    first = StepCost(KEY, str(tmp_path))
    for seqs, rows in ((4, 0), (4, 8), (16, 0), (16, 24)):
        first.observe(seqs, rows, 1.0 + seqs / 8 + rows / 16)
    first.save()
    cost = StepCost(KEY, str(tmp_path))
    rng = random.Random(7)
    shapes = [(s, r) for s in (1, 3, 4, 12, 16, 24) for r in (0, 1, 5, 8, 20, 40)]
    # A live plain step twice as slow as seeded, then a drafting step at exactly its seeded
    # value: it turns live unscaled, though its estimate did not move.
    steps = [(4, 0, 3.0), (4, 8, 2.0)]
    steps += [(s, r, rng.choice((1.0, 1.5, 2.0, 3.0)) * (1 + s / 8 + r / 16))
              for s, r in (rng.choice(shapes) for _ in range(300))]
    for seqs, rows, seconds in steps:
        cost.observe(seqs, rows, seconds)
        for s, r in shapes:
            n = bucket_of(SEQ_GRID, s)
            assert cost.plain(s) == cost._plain(n)
            assert cost.extra(s, r) == (cost._extra(n, r) if r > 0 else 0.0)
