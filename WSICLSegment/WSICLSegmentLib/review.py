"""Which results of the last run to look at, and which volume to annotate next (Qt-free).

A :class:`ReviewQueue` is made from a run's results (each with its confidence from the
engine, :mod:`wsicl.confidence`): the flagged ones, least confident first, stepped through
one at a time, and per structure the target volume whose result is least confident, the
one to add to that structure's context set next.
"""
import dataclasses
from typing import Dict, List, Optional, Sequence

from wsicl.review import annotate_next, judged_results


@dataclasses.dataclass(frozen=True)
class Judged:
    """One result: the target volume's node ID and name, the structure, its confidence in
    [0, 1] (None when the engine gave no evidence) and whether to review it."""

    volume_id: str
    volume_name: str
    structure: str
    confidence: Optional[float]
    review: bool

    def words(self) -> str:
        """``"CT 3, liver: confidence 0.21"``."""
        said = "no confidence" if self.confidence is None else \
            f"confidence {self.confidence:.2f}"
        return f"{self.volume_name}, {self.structure}: {said}"


class ReviewQueue:
    """The flagged results of a run, least confident first, and a cursor over them. The
    order and the choice of what to annotate next are the engine's
    (:mod:`wsicl.review`, on the results written as run-report rows)."""

    def __init__(self, judged: Sequence[Judged] = (), interactive: bool = False) -> None:
        rows: Dict[str, dict] = {}
        for item in judged:
            row = rows.setdefault(item.volume_id, {"target": item.volume_id,
                                                   "input": item.volume_name,
                                                   "status": "done", "structures": {}})
            row["structures"][item.structure] = {"confidence": item.confidence,
                                                 "review": item.review}
        found = {(item.volume_id, item.structure): item for item in judged}
        self.ordered = [found[item.target["target"], item.structure]
                        for item in judged_results(list(rows.values()))]
        self.flagged = [item for item in self.ordered if item.review]
        self.suggested = {} if interactive else {
            structure: found[item.target["target"], structure]
            for structure, item in annotate_next(list(rows.values())).items()}
        self.position = -1

    def next(self) -> Optional[Judged]:
        """The next flagged result, from the least confident, round and round; None when
        nothing is flagged."""
        if not self.flagged:
            return None
        self.position = (self.position + 1) % len(self.flagged)
        return self.flagged[self.position]

    def annotate_next(self) -> Dict[str, Judged]:
        """Per structure, the least confident result of an in-context run (an interactive
        run's targets are context volumes already: none)."""
        return dict(self.suggested)

    def summary(self) -> str:
        """One sentence for the status line ("" when no result carries a confidence)."""
        if not self.ordered:
            return ""
        if not self.flagged:
            return f"none to review (lowest confidence {self.ordered[0].confidence:.2f})"
        return (f"{len(self.flagged)} of {len(self.ordered)} results to review, least "
                "confident first:")

    def marks(self) -> List[str]:
        """Every result in words with its mark, least confident first."""
        return [("to review: " if item.review else "") + item.words() for item in self.ordered]
