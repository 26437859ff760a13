"""The validation matrix: a TOML list of setups, each run through `estimate` and `trace`."""

from __future__ import annotations

from pathlib import Path

from vramplan.errors import UsageError
from vramplan.tomlfile import RunRecord, parse_record, read_toml


DEFAULT_MATRIX = Path("validation/matrix.toml")


class MatrixCase(RunRecord):
    """One setup of the matrix; `model` is a catalog name or a config.json path (relative to the matrix file)."""

    id: str
    ci: bool = False


def load_matrix(path: Path) -> list[MatrixCase]:
    """Every case of the matrix file, with config paths made absolute; ids must be unique."""
    where = f"--matrix {path}"
    raw = read_toml(path, where)
    cases = [parse_record(MatrixCase, case, where) for case in raw.get("case", [])]
    seen: set[str] = set()
    resolved = []
    for case in cases:
        if case.id in seen:
            raise UsageError(f"--matrix {path}: case id {case.id!r} appears twice")
        seen.add(case.id)
        relative = path.parent / case.model
        model = str(relative) if case.model.endswith(".json") and relative.exists() else case.model
        resolved.append(case.model_copy(update={"model": model}))
    if not resolved:
        raise UsageError(f"--matrix {path}: no [[case]] entries")
    return resolved


def select_cases(cases: list[MatrixCase], subset: str, ids: list[str] | None = None) -> list[MatrixCase]:
    """`ci` (the fast subset), `full` (the rest), or `all`; `ids` picks cases by id instead."""
    if ids:
        known = {case.id: case for case in cases}
        unknown = [case_id for case_id in ids if case_id not in known]
        if unknown:
            raise UsageError(f"--case {unknown[0]}: not in the matrix")
        return [known[case_id] for case_id in ids]
    if subset == "all":
        return cases
    if subset == "ci":
        return [case for case in cases if case.ci]
    if subset == "full":
        return [case for case in cases if not case.ci]
    raise UsageError(f"--subset {subset!r}: choose ci, full or all")
