"""Communication is graded from the kernel's byte counts, which code in a rank cannot forge.

Each cheat below gets the right numbers while hiding, faking or switching off
the in-rank record of torch.distributed calls, the way a student who has read
the grader's source would. Each must lose every multi-rank case of its
exercise with the failure kind that names the lie; the solutions keep full
marks (tests/test_kit_grades.py), with the kernel's counts matching the
record's on every case (here).
"""

from __future__ import annotations

import pytest

from conftest import KIT, make_submission, planted
from grader import checks, report, results_json
from grader.grading import MEASURES, Grader
from grader.verdict import Kind, fail
from variants import Span, Variant, apply

EX2, EX3, EX4, EX5 = ("ex2_blockwise_attention.py", "ex3_allgather_attention.py", "ex4_ulysses_attention.py",
                      "ex5_ring_attention.py")

HIDDEN_GATHER = ("    cur = torch.stack((k, v))  # (2, B, H, S/P, D): K and V travel as one message\n"
                 "    nxt = torch.empty_like(cur)\n")

# the ring's merge step, fed from a hidden copy of every rank's (K, V) block instead of the ring's own
CHEATS_RING_MERGE = ("            out_rows, lse_rows = merge_attention(",
                     "            blk_out, blk_lse = attention_with_lse(\n"
                     "                q_c[:, :, q_start:], blocks[(rank - step) % world_size][0, :, :, :k_stop],\n"
                     "                blocks[(rank - step) % world_size][1, :, :, :k_stop],\n"
                     "                q_pos_dev[q_start:], k_pos[:k_stop].to(q.device))\n"
                     "            out_rows, lse_rows = merge_attention(")

CHEATS = [
    Variant(
        "ex5_cheat_unrecorded_allgather", EX5,
        "K/V all-gathered through the unwrapped function (dist.all_gather.__wrapped__), then a dummy ring of "
        "the right size run for the record while the blocks come from the gathered copy",
        [(HIDDEN_GATHER,
          HIDDEN_GATHER +
          "    blocks = [torch.empty_like(cur) for _ in range(world_size)]\n"
          "    getattr(dist.all_gather, '__wrapped__', dist.all_gather)(blocks, cur, group=group)\n"),
         CHEATS_RING_MERGE],
    ),
    Variant(
        "ex5_cheat_record_switched_off", EX5,
        "the record switched off (grader.instrument._trace = None, reached through sys.modules) around a "
        "hidden all-gather",
        [(HIDDEN_GATHER,
          HIDDEN_GATHER +
          "    import sys\n"
          "    rec = sys.modules['grader.instrument']\n"
          "    saved, rec._trace = rec._trace, None\n"
          "    blocks = [torch.empty_like(cur) for _ in range(world_size)]\n"
          "    dist.all_gather(blocks, cur, group=group)\n"
          "    rec._trace = saved\n")],
    ),
    Variant(
        "ex5_cheat_functional_allgather", EX5,
        "K/V all-gathered through a functional collective (torch.distributed._functional_collectives, "
        "dispatched as an op, not through dist.all_gather), then the dummy ring of cheat one for the record",
        [(HIDDEN_GATHER,
          HIDDEN_GATHER +
          "    import torch.distributed._functional_collectives as fc\n"
          "    pg = group if group is not None else dist.group.WORLD\n"
          "    gathered = fc.wait_tensor(fc.all_gather_tensor(cur, 0, pg))  # (2P, B, H, S/P, D)\n"
          "    blocks = gathered.reshape(world_size, *cur.shape)\n"),
         CHEATS_RING_MERGE],
    ),
    Variant(
        "ex5_cheat_store_allgather", EX5,
        "K/V all-gathered through the rendezvous store (set this rank's block, get every other), then the "
        "dummy ring of cheat one for the record",
        [(HIDDEN_GATHER,
          HIDDEN_GATHER +
          "    import io\n"
          "    store = dist.distributed_c10d._get_default_store()\n"
          "    me = dist.get_rank()\n"
          "    tag = store.add(f'calls{me}', 1)  # every member counts its own calls: the same number on all\n"
          "    buf = io.BytesIO()\n"
          "    torch.save(cur.cpu(), buf)\n"
          "    store.set(f'kv{tag}-{me}', buf.getvalue())\n"
          "    members = dist.get_process_group_ranks(group or dist.group.WORLD)\n"
          "    blocks = [torch.load(io.BytesIO(store.get(f'kv{tag}-{g}'))).to(cur.device) for g in members]\n"),
         CHEATS_RING_MERGE],
    ),
    Variant(
        "ex4_cheat_pg_allgather_dummy_alltoall", EX4,
        "q, k, v all-gathered through the ProcessGroup object's own method, attention on the whole sequence, "
        "and four dummy all_to_all_single calls of the right size for the record",
        [(Span("    q_h, k_h, v_h = (seq_to_head(t, group) for t in (q, k, v))", "return head_to_seq(out_h, group)  # (B, H, S/P, D)"),
          "    pg = group if group is not None else dist.distributed_c10d._get_default_group()\n"
          "    def gather(t):\n"
          "        parts = [torch.empty_like(t) for _ in range(world_size)]\n"
          "        pg.allgather([parts], [t.contiguous()]).wait()\n"
          "        return torch.cat(parts, dim=2)\n"
          "    full_q, full_k, full_v = gather(q), gather(k), gather(v)\n"
          "    for t in (q, k, v, q):\n"
          "        dist.all_to_all_single(torch.empty_like(t), t.contiguous(), group=group)\n"
          "    out, _ = attention_with_lse(full_q, full_k, full_v, pos, pos, causal=True)\n"
          "    rank = dist.get_rank(group)\n"
          "    mine = torch.cat([torch.nonzero(pos == p).flatten() for p in shard_positions(seq_len, rank, world_size, scheme).to(pos.device)])\n"
          "    return out[:, :, mine].to(q.dtype)")],
    ),
]


@pytest.fixture(scope="module")
def graded(lab, tmp_path_factory):
    """Every multi-rank case of each cheat's exercise, graded."""
    found = {}
    for cheat in CHEATS:
        sub = make_submission(tmp_path_factory.mktemp(cheat.name), {cheat.solution: apply(cheat)})
        # the first cheat on every case; the others, which evade the same judge, on the public ones
        cases = [c for c in lab.cases if c.exercise == cheat.exercise and c.group_size > 1
                 and c.check not in ("seq_to_head", "head_to_seq", "heads_error", "errors")
                 and (cheat is CHEATS[0] or not c.hidden)]
        with Grader(sub, lab) as grader:
            found[cheat.name] = [grader.run(c) for c in cases]
    return found


def _shard_bytes(case) -> int:
    from grader.checks.attention import shard_numel
    from grader.tasks import DTYPES

    return shard_numel(case) * DTYPES[case.dtype].itemsize


@pytest.mark.parametrize("cheat", [c.name for c in CHEATS])
def test_cheat_loses_every_multirank_case(cheat, graded, lab):
    """Every case with a K shard of 4 KiB or more is lost; the few low-precision cases, kept at the sizes
    their tolerances were measured at, are below the framing allowance and leave a small share at most."""
    results = graded[cheat]
    assert results
    decisive = [r for r in results if _shard_bytes(r.case) >= 4096]
    passed = [r.case.title for r in decisive if r.verdict.passed]
    assert not passed, f"{cheat} passed {passed}"
    kept = sum(r.case.points for r in results if r.verdict.passed and not r.case.bonus)
    total = sum(r.case.points for r in results if not r.case.bonus)
    assert kept <= 0.2 * total, (kept, total)
    kinds = {r.verdict.kind for r in decisive}
    assert kinds <= {Kind.RECORD_MISMATCH, Kind.COMMUNICATION}, kinds
    assert Kind.RECORD_MISMATCH in kinds
    assert any("the communication record does not match what the ranks actually sent" in r.verdict.message
               for r in decisive)


def _graded(lab, tmp_path, files: dict[str, str], exercise: str, name: str):
    """The solutions with `files` replaced by these sources, graded on one case of the lab."""
    case = next(c for c in lab.cases if c.exercise == exercise and c.name == name)
    with Grader(make_submission(tmp_path, files), lab) as grader:
        return grader.run(case)


def _ex3_forward_zigzag(code: str, lab, tmp_path):
    """ex3's solution with `code` run first in all_gather_kv_attention, on its forward_zigzag case."""
    return _graded(lab, tmp_path, {EX3: planted("all_gather_kv_attention", code, EX3)}, "ex3", "forward_zigzag")


@pytest.mark.parametrize("cheat", [c.name for c in CHEATS if c.solution == EX5])
def test_ex7_s_ring_step_is_held_to_the_kernel_s_bytes(cheat, lab, tmp_path):
    """ex7's step runs the student's ring: a ring forward that all-gathers out of the record's sight there
    fails the public ring step too. Its hidden K/V bytes are a few percent of what the gradients'
    all-reduce moves: they show because the record's bound for an all-reduce is what gloo's ring moves,
    2(P-1)/P of its bytes (with twice its bytes, they hid in the allowance), and because ex7's ring and
    Ulysses steps have S = 64 (at S = 16 the cheat stood 2-4 KiB past the bound, at 64, 92 KiB)."""
    variant = next(c for c in CHEATS if c.name == cheat)
    result = _graded(lab, tmp_path, {variant.solution: apply(variant)}, "ex7", "ring_p2")
    assert result.verdict.kind is Kind.RECORD_MISMATCH, result.verdict.message
    assert "does not match what the ranks actually sent" in result.verdict.message


def test_a_record_claiming_traffic_that_never_happened_fails(lab, tmp_path):
    """Lines written into the record for transfers that never happened are caught by the kernel's count."""
    fake = ("import sys\n"
            "rec = sys.modules['grader.instrument']._trace\n"
            "for _ in range(8):\n"
            "    n = rec.next_call()\n"
            "    rec.write({'call': n, 'op': 'all_gather', 'state': 'begin', 'group': None,\n"
            "               'tensors': [{'numel': 1 << 20, 'bytes': 4 << 20, 'shape': [1 << 20], 'dtype': 'float32'}]})\n"
            "    rec.write({'call': n, 'state': 'end'})\n")
    result = _ex3_forward_zigzag(fake, lab, tmp_path)
    assert result.verdict.kind is Kind.RECORD_MISMATCH, result.verdict.message
    assert "claims at least" in result.verdict.message


# Code in the rank finds the worker's sync (its caller's frame), says "the call returned" at once, so the
# grader closes its window on the kernel's counters, then silences the worker's own later "E" and the
# in-rank record, and communicates: an all-gather the window never sees.
EARLY_END = ("import inspect, sys\n"
             "sync = next(f.frame.f_locals['sync'] for f in inspect.stack() if 'sync' in f.frame.f_locals)\n"
             "sync(b'E', b'F')\n"
             "def _silent():\n"
             "    conn = nonce = None\n"
             "    def quiet(say, wait_for):\n"
             "        return conn, nonce\n"
             "    return quiet\n"
             "sync.__code__ = _silent().__code__\n"
             "sys.modules['grader.instrument']._trace = None\n")


def test_communication_after_a_forged_end_of_the_call_fails(lab, tmp_path):
    """The window closes when a rank says its call returned; what it receives after that is caught."""
    result = _ex3_forward_zigzag(EARLY_END, lab, tmp_path)
    assert result.verdict.kind is Kind.RECORD_MISMATCH, result.verdict.message
    assert "after its call had told the grader it returned" in result.verdict.message


BLIND = ('def ring_forward(q, k, v, scheme="contiguous", group=None):\n',
         'def ring_forward(q, k, v, scheme="contiguous", group=None):\n'
         '    from torch.utils._python_dispatch import _disable_current_modes\n'
         '    with _disable_current_modes():  # no TorchDispatchMode (FLOP counter, memory probe) sees the call\n'
         '        return _ring_forward(q, k, v, scheme, group)\n\n\n'
         'def _ring_forward(q, k, v, scheme="contiguous", group=None):\n')


@pytest.mark.parametrize("bug, case_name, kind, text", [
    ("ex5_bug_no_skip", "compute_contiguous", Kind.COMPUTE, "kernel"),
    ("ex5_bug_keeps_all_blocks", "memory", Kind.MEMORY, "kernel"),
    # whole blocks under zigzag and striped are allowed, but blinded, the counter saw none of the FLOPs
    # that every visible (query, key) pair of a correct output needed
    ("ex5_correct_whole_blocks_off_contiguous", "compute_zigzag", Kind.RECORD_MISMATCH,
     "the FLOP count does not match"),
    ("ex5_correct_whole_blocks_off_contiguous", "compute_striped", Kind.RECORD_MISMATCH,
     "the FLOP count does not match"),
])
def test_blinded_probes_do_not_hide_work_or_memory(bug, case_name, kind, text, lab, tmp_path):
    """A ring that hides from the in-rank probes is judged by the kernel's CPU time and peak memory, or,
    where those cannot tell, fails for the FLOPs its correct output needed and the counter never saw."""
    from variants import VARIANTS

    variant = next(v for v in VARIANTS if v.name == bug)
    blinded = Variant(bug + "_blinded", variant.solution, variant.bug, variant.edits + [BLIND])
    result = _graded(lab, tmp_path, {variant.solution: apply(blinded)}, "ex5", case_name)
    assert result.verdict.kind is kind, result.verdict.message
    assert text in result.verdict.message, result.verdict.message
    if kind is Kind.COMPUTE:  # the kernel's CPU times: the same in every run, not one skewed one
        assert f"(in each of {MEASURES} runs)" in result.verdict.message, result.verdict.message


@pytest.mark.parametrize("case_name, blocks, most", [("compute_zigzag", "4.00", "2.50"),
                                                      ("compute_striped", "3.00", "2.53")])
def test_whole_blocks_under_zigzag_and_striped_pass_with_a_note(case_name, blocks, most, lab, tmp_path):
    """The contract grades the skip under contiguous sharding only: under zigzag and striped no block is
    wholly hidden, and computing only the visible rectangle is recommended, not graded. A ring computing
    every block whole keeps the case's points; the report notes the rectangle (rank 0 at P = 4 under
    zigzag: 4 blocks, not (P+1)/2; at P = 3, S = 24 under striped: 3, not 2.53)."""
    from variants import VARIANTS

    variant = next(v for v in VARIANTS if v.name == "ex5_correct_whole_blocks_off_contiguous")
    result = _graded(lab, tmp_path, {variant.solution: apply(variant)}, "ex5", case_name)
    case = result.case
    assert result.verdict.passed and result.score == case.points, result.verdict.message
    assert "recommended, not graded" in result.verdict.message, result.verdict.message
    assert f"rank 0 computes {blocks} blocks" in result.verdict.message, result.verdict.message
    assert f"at most {most}" in result.verdict.message or f"= {most}" in result.verdict.message
    assert "NOTE" in report.summary([result], lab) and "visible rectangle" in report.summary([result], lab)
    entry = results_json.test_entry(result)
    assert entry["score"] == case.points  # a hidden case's note would name its sizes: not shown
    assert ("recommended, not graded" in entry["output"]) != case.hidden, entry["output"]


# Rank 0's block attention run in a child process, its result back through a pipe; with ORPHAN the child
# forks the worker and exits, so the pool's init adopts and reaps it. On top of BLIND.
ELSEWHERE = (
    "def ring_forward(q, k, v, scheme=\"contiguous\", group=None):\n",
    "def _elsewhere(fn, *args):\n"
    "    import io, os\n"
    "    if dist.get_rank() != 0:\n"
    "        return fn(*args)\n"
    "    r, w = os.pipe()\n"
    "    pid = os.fork()\n"
    "    if pid == 0:\n"
    "        os.close(r)\n"
    "        if ORPHAN and os.fork():\n"
    "            os._exit(0)\n"
    "        buf = io.BytesIO()\n"
    "        torch.save(fn(*args), buf)\n"
    "        data = buf.getvalue()\n"
    "        while data:\n"
    "            data = data[os.write(w, data):]\n"
    "        os._exit(0)\n"
    "    os.close(w)\n"
    "    chunks = []\n"
    "    while chunk := os.read(r, 1 << 20):\n"
    "        chunks.append(chunk)\n"
    "    os.close(r)\n"
    "    os.waitpid(pid, 0)\n"
    "    return torch.load(io.BytesIO(b''.join(chunks)))\n\n\n"
    "def ring_forward(q, k, v, scheme=\"contiguous\", group=None):\n")
TO_CHILD = ("            blk_out, blk_lse = attention_with_lse(\n",
            "            blk_out, blk_lse = _elsewhere(attention_with_lse,\n")
# after BLIND, which is not solution text an edit may replace: (i+1) blocks of matmuls for the counter
RECEIPTS = ("        return _ring_forward(q, k, v, scheme, group)\n",
            "        out = _ring_forward(q, k, v, scheme, group)\n"
            "    for _ in range(2 * (dist.get_rank(group) + 1)):\n"
            "        q @ q.transpose(-2, -1)\n"
            "    return out\n")


@pytest.mark.parametrize("orphan", [False, True], ids=["child", "orphan"])
def test_work_handed_to_another_process_counts_as_the_ranks(orphan, lab, tmp_path):
    """A ring that skips nothing, blind to the counter, with matmuls of each rank's formula on the side:
    rank 0 hands its blocks to a process of its own, so its own threads look idle. The CPU of processes
    a rank started (or the pool's init adopted) during the call is the rank's, and the case still fails
    on the kernel's CPU times."""
    from variants import VARIANTS

    variant = next(v for v in VARIANTS if v.name == "ex5_bug_no_skip")
    cheat = Variant("ex5_cheat_offload", variant.solution, variant.bug, variant.edits + [BLIND, ELSEWHERE, TO_CHILD])
    source = apply(cheat)
    assert source.count(RECEIPTS[0]) == 1
    source = source.replace(*RECEIPTS).replace("import torch\n", f"import torch\nORPHAN = {orphan}\n", 1)
    result = _graded(lab, tmp_path, {variant.solution: source}, "ex5", "compute_contiguous")
    assert result.verdict.kind is Kind.COMPUTE, result.verdict.message
    assert "by the kernel's count" in result.verdict.message, result.verdict.message
    assert f"(in each of {MEASURES} runs)" in result.verdict.message, result.verdict.message


ELEMENTWISE = (
    ("    scores = (q.to(cdt) @ k.to(cdt).transpose(-2, -1)) * scale  # (B, H, Sq, Sk)\n",
     "    scores = (q.to(cdt)[..., :, None, :] * k.to(cdt)[..., None, :, :]).sum(-1) * scale\n"),
    ("    out = (weights / denom) @ v.to(cdt)  # (B, H, Sq, D)\n",
     "    out = ((weights / denom)[..., :, :, None] * v.to(cdt)[..., None, :, :]).sum(-2)\n"),
)


@pytest.mark.parametrize("case_name", ["compute_contiguous", "compute_zigzag", "compute_striped"])
def test_attention_the_flop_counter_cannot_see_fails_the_compute_cases(case_name, lab, tmp_path):
    """Scores and outputs as multiply-and-sum: right numbers, no matmul for the counter. The solution's ring
    on top of it skips correctly, but its compute verdict would rest on nothing, so the case fails."""
    source = (KIT / "solutions" / EX2).read_text()
    for old, new in ELEMENTWISE:
        assert old in source
        source = source.replace(old, new)
    result = _graded(lab, tmp_path, {EX2: source}, "ex5", case_name)
    assert result.verdict.kind is Kind.RECORD_MISMATCH, result.verdict.message
    assert "the FLOP count does not match the work the output needed" in result.verdict.message


def test_matmul_receipts_on_meta_tensors_do_not_stand_for_the_work(lab, tmp_path):
    """The attention as multiply-and-sum, plus matmuls of the same shapes on meta tensors (no data, no
    work) for the counter to see: FLOPs are a formula of shapes, so they must count only where an op
    computed. The case fails as if the receipts were not there."""
    source = (KIT / "solutions" / EX2).read_text()
    receipts = ("    q.to('meta') @ k.to('meta').transpose(-2, -1)  # for the counter\n",
                "    weights.to('meta') @ v.to('meta')  # for the counter\n")
    for (old, new), receipt in zip(ELEMENTWISE, receipts):
        source = source.replace(old, new + receipt)
    result = _graded(lab, tmp_path, {EX2: source}, "ex5", "compute_zigzag")
    assert result.verdict.kind is Kind.RECORD_MISMATCH, result.verdict.message
    assert "the counter saw 0.00 blocks of matmuls" in result.verdict.message, result.verdict.message


def test_a_rank_holds_no_input_that_is_another_functions_answer(lab, tmp_path):
    """ex4's layout case: seq_to_head and head_to_seq start from different tensors, so returning the other
    input found up the call stack is wrong, not full marks."""
    source = (KIT / "solutions" / EX4).read_text()
    steal = ('def seq_to_head(x, group=None):\n'
             '    import inspect\n'
             '    for f in inspect.stack():\n'
             '        ctx = f.frame.f_locals.get("ctx")\n'
             '        if ctx is not None and hasattr(ctx, "inputs") and "head" in ctx.inputs:\n'
             '            return ctx.inputs["head"].clone()\n'
             '    return _seq_to_head(x, group)\n\n\n'
             'def _seq_to_head(x, group=None):\n')
    sub = make_submission(tmp_path, {EX4: source.replace("def seq_to_head(x, group=None):\n", steal, 1)})
    case = next(c for c in lab.cases if c.exercise == "ex4" and c.check == "seq_to_head" and not c.hidden)
    with Grader(sub, lab) as grader:
        result = grader.run(case)
    assert result.verdict.kind is Kind.MISMATCH, result.verdict.message
    assert "seq_to_head(x)" in result.verdict.message


@pytest.mark.parametrize("slow_runs, passed", [(1, True), (MEASURES, False)])
def test_a_verdict_on_cpu_time_stands_only_when_the_case_is_run_again(slow_runs, passed, lab, monkeypatch):
    """A busy machine can skew one run's CPU times (a correct ring's skip failed 1 of 12 single runs under
    5 other grades): such a verdict is the case's only if every one of MEASURES runs ends that way."""
    case = next(c for c in lab.cases if c.exercise == "ex1")
    check = type(checks.get(case.exercise, case.check))
    real, calls = check.judge, []

    def judge(self, case, inputs, outcomes):
        calls.append(case.name)
        if len(calls) <= slow_runs:
            return fail(Kind.COMPUTE, "rank 0 spent as much CPU as rank 3", timed=True)
        return real(self, case, inputs, outcomes)

    monkeypatch.setattr(check, "judge", judge)
    with Grader(KIT / "solutions", lab) as grader:
        result = grader.run(case)
    assert result.verdict.passed is passed, result.verdict.message
    assert len(calls) == min(slow_runs + 1, MEASURES)
    if not passed:
        assert result.verdict.message.endswith(f"(in each of {MEASURES} runs)"), result.verdict.message


# Every received K/V block parked off the heap for the whole ring, then attended one at a time: memory grows
# with P as in ex5_bug_keeps_all_blocks, but in pages no resident set counts.
PARK = {
    "tmpfs": ("    import tempfile\n"
              "    parked = tempfile.mkdtemp()  # on the rank's private tmpfs\n"
              "    def park(step, t):\n"
              "        torch.save(t, f'{parked}/{step}')\n"
              "    def fetch(step):\n"
              "        return torch.load(f'{parked}/{step}')\n"),
    "memfd": ("    import io, os\n"
              "    files = {}\n"
              "    def park(step, t):\n"
              "        buf = io.BytesIO()\n"
              "        torch.save(t, buf)\n"
              "        files[step] = os.memfd_create(f'kv{step}')  # anonymous shared memory, never mapped\n"
              "        os.write(files[step], buf.getvalue())\n"
              "    def fetch(step):\n"
              "        os.lseek(files[step], 0, os.SEEK_SET)\n"
              "        data = b''\n"
              "        while chunk := os.read(files[step], 1 << 20):\n"
              "            data += chunk\n"
              "        return torch.load(io.BytesIO(data))\n"),
}
PARKED_RING = (
    "    held = torch.stack((k, v))  # (2, B, H, S/P, D)\n"
    "    park(0, held)\n"
    "    for step in range(1, world_size):\n"
    "        nxt = torch.empty_like(held)\n"
    "        for work in ring_exchange(held, nxt, group):\n"
    "            work.wait()\n"
    "        park(step, nxt)\n"
    "        held = nxt\n"
    "    held = nxt = None\n")


@pytest.mark.parametrize("where", sorted(PARK))
def test_blocks_parked_outside_the_heap_count_as_held(where, lab, tmp_path):
    """Memory a rank fills is the rank's wherever it lies: a file on its tmpfs or a memfd holds every block
    while its resident set looks like a ring's. The kernel's charge to the rank's memory cgroup counts those
    pages, and the case fails for memory."""
    from grader import memcg

    if not memcg.available():
        pytest.skip(f"no memory cgroup the grader can create here ({memcg.why_not()}): only VmHWM is evidence")
    edits = [(HIDDEN_GATHER, PARK[where] + PARKED_RING),
             ("    for step in range(world_size):\n"
              "        last = step == world_size - 1\n"
              "        works = [] if last else ring_exchange(cur, nxt, group)  # in flight while we compute\n",
              "    for step in range(world_size):\n"
              "        cur = fetch(step)\n"),
             ("        if not last:\n"
              "            for work in works:\n"
              "                work.wait()\n"
              "            cur, nxt = nxt, cur  # the block just sent is no longer needed: its buffer receives next\n",
              "")]
    cheat = Variant(f"ex5_cheat_parked_{where}", EX5, "every block parked off the heap", edits)
    result = _graded(lab, tmp_path, {EX5: apply(cheat)}, "ex5", "memory")
    assert result.verdict.kind is Kind.MEMORY, result.verdict.message
    assert "must not grow with P" in result.verdict.message, result.verdict.message


def test_every_rank_has_a_memory_cgroup_of_its_own_while_its_pool_lives(lab, tmp_path):
    """Each rank's charge is read from a cgroup only it (and what it starts) is in, and the cgroups go with
    the pools: none is left once the grader closes."""
    from grader import memcg

    if not memcg.available():
        pytest.skip(f"no memory cgroup the grader can create here ({memcg.why_not()})")
    case = next(c for c in lab.cases if c.exercise == "ex5" and c.name == "memory")
    with Grader(make_submission(tmp_path), lab) as grader:
        result = grader.run(case)
        pool = grader.runner.pool(case.world_size)
        groups = {r: (pool.memcg.ranks[r] / "cgroup.procs").read_text().split() for r in pool.pids}
        assert groups == {r: [str(pid)] for r, pid in pool.pids.items()}
    assert result.verdict.passed, result.verdict.message
    assert all(e["charged"] is not None and e["charged"] > 0 for e in result.evidence)
    assert not list(memcg._base().glob("pool*"))
