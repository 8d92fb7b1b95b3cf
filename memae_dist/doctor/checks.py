"""The outcome of one doctor check, and how a list of them is shown."""

from __future__ import annotations

from dataclasses import dataclass

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"
DOCTOR_HINT = "`memae-dist doctor --storage URI --data URI` checks every node"


@dataclass
class Check:
    name: str  # what was checked: "ray", "cluster", "storage", "manifest", "gpus", ...
    status: str  # PASS | WARN | FAIL | SKIP
    detail: str
    fix: str = ""
    node: str = "-"  # "driver", a node label, or "-" for cluster-wide checks

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def line(self) -> str:
        where = f" [{self.node}]" if self.node != "-" else ""
        fix = f" Fix: {self.fix}" if self.fix else ""
        return f"{self.name}{where}: {self.detail}.{fix}"


def format_table(checks: list[Check]) -> str:
    """A pass/fail table, then the fix of every failure and warning."""
    head = ("CHECK", "NODE", "STATUS", "DETAIL")
    rows = [(c.name, c.node, c.status, c.detail) for c in checks]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    lines = ["  ".join(f"{v:<{w}}" for v, w in zip(r[:3], widths)) + "  " + r[3]
             for r in [head, *rows]]
    fixes = [c for c in checks if c.fix and c.status in (FAIL, WARN)]
    if fixes:
        lines += ["", "How to fix:"]
        lines += [f"  {c.status} {c.name} [{c.node}]: {c.fix}" for c in fixes]
    n_fail = sum(c.failed for c in checks)
    lines += ["", f"{len(checks)} checks: {n_fail} failed"
                  f", {sum(c.status == WARN for c in checks)} warnings"]
    return "\n".join(lines)
