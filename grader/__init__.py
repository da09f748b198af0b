"""cplab's grader: runs exercise code on P torch.distributed ranks and judges it against float64 references.

Read it top to bottom: manifest (cases) -> checks (inputs, rank task, judge)
-> runner + worker (rank processes) -> grading (one submission) -> report,
results_json, pytest_plugin, cli (the fronts).
"""

__version__ = "0.1.0"
