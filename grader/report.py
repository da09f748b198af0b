"""Terminal reports: the per-exercise score table; for each failing case what happened and a hint, for a
passed one with a note, the note."""

from __future__ import annotations

import textwrap

from grader.grading import CaseResult, totals
from grader.manifest import Manifest
from grader.verdict import EXPLAIN, Kind


def score_table(results: list[CaseResult], manifest: Manifest) -> str:
    per = totals(results)
    rows = [("exercise", "title", "cases passed", "points")]
    score = best = 0.0
    for ex in manifest.exercises:
        if ex.id not in per:
            continue
        s, m, p, n = per[ex.id]
        score, best = score + s, best + m
        bonus = [r for r in results if r.case.exercise == ex.id and r.case.bonus and not r.verdict.skipped]
        passed = f"{p}/{n}"
        if bonus:  # "8/9" alone reads as a lost case when the one failing is a bonus
            won = sum(r.verdict.passed for r in bonus)
            passed = f"{p - won}/{n - len(bonus)} + bonus {won}/{len(bonus)}"
        rows.append((ex.id, ex.title, passed, f"{s:g}/{m:g}"))
    rows.append(("total", "", "", f"{score:g}/{best:g}"))
    skipped = [r for r in results if r.verdict.skipped]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    line = lambda r: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    rule = "-" * len(line(rows[0]))
    text = [line(rows[0]), rule] + [line(r) for r in rows[1:-1]] + [rule, line(rows[-1])]
    if skipped:
        text.append(f"{len(skipped)} case(s) skipped: {skipped[0].verdict.message}")
    return "\n".join(text)


def failure(result: CaseResult, *, show_output: bool = True, width: int = 100) -> str:
    v = result.verdict
    title = result.case.title + (" (bonus: no points lost)" if result.case.bonus else "")
    head = f"FAIL {title}  [{v.kind.value}]" if not v.skipped else f"SKIP {title}"
    body = [head]
    for para in v.message.splitlines() or [EXPLAIN.get(v.kind, "")]:
        body.append(textwrap.indent(para if para.startswith("  ") else textwrap.fill(para, width - 4), "    "))
    if v.detail:
        body.append(textwrap.indent(v.detail.rstrip(), "    "))
    if v.hint:
        body.append(textwrap.indent(textwrap.fill("hint: " + v.hint, width - 4), "    "))
    if show_output and result.output and v.kind not in (Kind.NOT_IMPLEMENTED, Kind.MISSING):
        body.append(textwrap.indent("captured output:\n" + _cap(result.output, 1500), "    "))
    return "\n".join(body)


def note(result: CaseResult, width: int = 100) -> str:
    """A passed case's note: what the code could do better that the case does not grade."""
    v = result.verdict
    body = [f"NOTE {result.case.title}", textwrap.indent(textwrap.fill(v.message, width - 4), "    ")]
    if v.hint:
        body.append(textwrap.indent(textwrap.fill("hint: " + v.hint, width - 4), "    "))
    return "\n".join(body)


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n[... {len(text) - limit} characters cut]"


def summary(results: list[CaseResult], manifest: Manifest) -> str:
    """The self-check report: every failing case in full, as pytest shows them, then the score table."""
    parts = [failure(r) for r in results if not r.ok]
    parts += [note(r) for r in results if r.verdict.passed and r.verdict.message]
    bonus = [r for r in results if r.bonus_not_attempted]
    if bonus:
        parts.append(f"{len(bonus)} bonus case(s) not attempted: " + ", ".join(r.case.title for r in bonus))
    parts.append(score_table(results, manifest))
    return "\n\n".join(parts)
