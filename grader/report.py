"""Terminal reports: the per-exercise score table and, for each failing case, what happened and a hint."""

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
        rows.append((ex.id, ex.title, f"{p}/{n}", f"{s:g}/{m:g}"))
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
    head = f"FAIL {result.case.title}  [{v.kind.value}]" if not v.skipped else f"SKIP {result.case.title}"
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


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n[... {len(text) - limit} characters cut]"


def summary(results: list[CaseResult], manifest: Manifest) -> str:
    """The self-check report: the first failure of each exercise in full, the others in a line each,
    then the score table. One bug usually fails several cases; its first report is the lesson."""
    parts, shown = [], set()
    for r in results:
        if r.ok:
            continue
        if r.case.exercise not in shown:
            shown.add(r.case.exercise)
            parts.append(failure(r))
        else:
            first = r.verdict.message.splitlines()[0] if r.verdict.message else ""
            parts[-1] += f"\nFAIL {r.case.title}  [{r.verdict.kind.value}]  {textwrap.shorten(first, 100)}"
    bonus = [r for r in results if r.bonus_not_attempted]
    if bonus:
        parts.append(f"{len(bonus)} bonus case(s) not attempted: " + ", ".join(r.case.title for r in bonus))
    parts.append(score_table(results, manifest))
    return "\n\n".join(parts)
