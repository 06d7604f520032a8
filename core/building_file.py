"""Load a building file (YAML) into a :class:`~core.building.Building`.

Every problem is reported with the file, the line and the path of the key, for example
``ref-tower.yaml:42: zones[3].floor: zone 'f11-z1' is on floor 11, which the building does
not have``. All problems of a file are collected, not just the first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from core.building import Building

Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int
    loc: Loc
    message: str

    @property
    def key(self) -> str:
        return format_loc(self.loc)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.key or '<top>'}: {self.message}"


class BuildingFileError(ValueError):
    """The file is not a valid building; ``problems`` lists every fault found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping."""


def _construct(node: yaml.Node, lines: dict[Loc, int], loc: Loc, file: str) -> Any:
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _UniqueKeyLoader(yaml.serialize(key_node)).get_single_data()
            if not isinstance(key, str):
                key = str(key)
            if key in out:
                raise BuildingFileError(
                    [Problem(file, key_node.start_mark.line + 1, (*loc, key), "key given twice")]
                )
            lines[(*loc, key)] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, lines, (*loc, key), file)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, lines, (*loc, i), file) for i, item in enumerate(node.value)]
    loader = _UniqueKeyLoader(yaml.serialize(node))
    return loader.get_single_data()


def _line_of(lines: dict[Loc, int], loc: Loc) -> int:
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return lines.get((), 1)


def _pydantic_loc(raw: tuple[int | str, ...]) -> Loc:
    """Drop pydantic's union/validator markers, keep keys and list indexes."""
    return tuple(p for p in raw if isinstance(p, int) or not str(p).startswith(("function-", "[")))


def parse_building(text: str, file: str = "<building>") -> Building:
    """Parse and validate YAML text; raise :class:`BuildingFileError` with every problem."""
    try:
        node = yaml.compose(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise BuildingFileError([Problem(file, line, (), f"not valid YAML: {exc}")]) from exc
    if node is None:
        raise BuildingFileError([Problem(file, 1, (), "the file is empty")])
    lines: dict[Loc, int] = {}
    data = _construct(node, lines, (), file)
    if not isinstance(data, dict):
        raise BuildingFileError([Problem(file, 1, (), "the top level must be a mapping")])
    try:
        building = Building.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = _pydantic_loc(tuple(err["loc"]))
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown key"
            elif err["type"] == "missing":
                message = "required key is missing"
            problems.append(Problem(file, _line_of(lines, loc), loc, message))
        raise BuildingFileError(problems) from exc
    cross = building.problems()
    if cross:
        raise BuildingFileError(
            [Problem(file, _line_of(lines, e.loc), e.loc, e.message) for e in cross]
        )
    return building


def load_building(path: str | Path) -> Building:
    """Read and validate a building file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BuildingFileError(
            [Problem(str(path), 1, (), f"cannot read the file: {exc}")]
        ) from exc
    return parse_building(text, str(path))
