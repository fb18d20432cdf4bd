"""Which detections a command keeps: a score threshold, per class where asked, and a class subset.

``--min-score`` takes a number, ``class=value`` pairs with an optional default, or a thresholds ``.json``
file as ``labeler estimate`` writes it; ``--classes`` keeps only the listed classes (docs/formats.md,
"Exports"). A detection is kept when its class is kept and its score is at least its class's threshold.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from labeler.errors import LabelerError
from labeler.io import storage
from labeler.io.coco import Category


@dataclass(frozen=True)
class LabelFilter:
    """Per-class score thresholds and the kept classes (the module doc)."""

    default: float
    per_class: dict[int, float]  # category id -> threshold, for classes not at the default
    classes: frozenset[int] | None = None  # the kept category ids; None keeps every class

    def threshold(self, category_id: int) -> float:
        """The lowest score kept for ``category_id``; infinity for a class left out."""
        if self.classes is not None and category_id not in self.classes:
            return math.inf
        return self.per_class.get(category_id, self.default)

    def keeps(self, category_id: int, score: float) -> bool:
        return score >= self.threshold(category_id)

    def kept(self, detections: list[dict]) -> list[dict]:
        """The detections (dicts with ``category_id`` and ``score``) this filter keeps, in their order."""
        return [d for d in detections if self.keeps(d["category_id"], d["score"])]

    def thresholds(self, category_ids: list[int]) -> np.ndarray:
        """``float32 [C]``: the threshold of each of ``category_ids`` (infinity for left-out classes)."""
        return np.array([self.threshold(c) for c in category_ids], dtype=np.float32)

    def describe(self, categories: list[Category]) -> str:
        """One line, e.g. ``score >= 0.5 (person >= 0.7); classes person, car``."""
        names = {c.id: c.name for c in categories}
        text = f"score >= {self.default:g}"
        if self.per_class:
            text += " (" + ", ".join(f"{names.get(c, c)} >= {t:g}" for c, t in sorted(self.per_class.items())) + ")"
        if self.classes is not None:
            text += "; classes " + ", ".join(str(names.get(c, c)) for c in sorted(self.classes))
        return text

    def to_json(self, categories: list[Category]) -> dict:
        """The file form (class names as keys), plus the kept classes when not all."""
        names = {c.id: c.name for c in categories}
        data: dict = {"default": self.default,
                      "classes": {names.get(c, str(c)): t for c, t in sorted(self.per_class.items())}}
        if self.classes is not None:
            data["only"] = [names.get(c, str(c)) for c in sorted(self.classes)]
        return data


def _category_id(token: str, categories: list[Category], option: str) -> int:
    token = token.strip()
    by_name = {c.name: c.id for c in categories}
    if token in by_name:
        return by_name[token]
    if token.lstrip("-").isdigit() and int(token) in {c.id for c in categories}:
        return int(token)
    known = ", ".join(c.name for c in categories)
    raise LabelerError(f"{option}: no class {token!r} in this run (its classes: {known})")


def _score(text: object, where: str) -> float:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise LabelerError(f"{where}: {text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise LabelerError(f"{where}: {value:g} is not in [0, 1]")
    return value


def _json_score(value: object, where: str) -> float:
    """A threshold in a JSON file: a JSON number, not ``true`` or the string ``"0.5"``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LabelerError(f"{where}: {json.dumps(value)[:40]} is not a number")
    return _score(value, where)


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """``json.loads`` hook: an object that names a key twice is refused (the last would win silently)."""
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise LabelerError(f"key {key!r} is given twice")
        seen[key] = value
    return seen


def _from_file(uri: str, categories: list[Category]) -> tuple[float, dict[int, float], frozenset[int] | None]:
    if not storage.exists(uri):
        raise LabelerError(f"--min-score {uri}: no such file")
    try:
        data = json.loads(storage.read_bytes(uri), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LabelerError(f"--min-score {uri}: not a JSON file ({error})") from None
    except LabelerError as error:
        raise LabelerError(f"--min-score {uri}: {error}") from None
    return _from_json(data, categories, f"--min-score {uri}")


def _add_once(per_class: dict[int, float], category_id: int, value: float, categories: list[Category],
              where: str) -> None:
    if category_id in per_class:
        name = next(c.name for c in categories if c.id == category_id)
        raise LabelerError(f"{where}: class {name!r} is given twice")
    per_class[category_id] = value


def _from_json(data: object, categories: list[Category], where: str
               ) -> tuple[float, dict[int, float], frozenset[int] | None]:
    if not isinstance(data, dict) or not isinstance(data.get("classes", {}), dict):
        raise LabelerError(f'{where}: expected {{"default": 0.5, "classes": {{"name": 0.7}}}}')
    default = _json_score(data.get("default", 0.0), f"{where}: default")
    per_class: dict[int, float] = {}
    for name, value in data.get("classes", {}).items():
        _add_once(per_class, _category_id(str(name), categories, where),
                  _json_score(value, f"{where}: class {name}"), categories, where)
    only = data.get("only")
    if only is None:
        return default, per_class, None
    if not isinstance(only, list) or not all(isinstance(n, (str, int)) and not isinstance(n, bool) for n in only):
        raise LabelerError(f'{where}: "only" must be a list of class names or ids, got {json.dumps(only)[:40]}')
    if not only:
        raise LabelerError(f'{where}: "only" names no class; leave it out to keep every class')
    return default, per_class, frozenset(_category_id(str(name), categories, where) for name in only)


def label_filter_from_json(data: dict, categories: list[Category]) -> LabelFilter:
    """The filter :meth:`LabelFilter.to_json` wrote (a thresholds file, a review's selection)."""
    default, per_class, kept = _from_json(data, categories, "thresholds")
    return LabelFilter(default, {c: t for c, t in per_class.items() if t != default}, kept)


def _from_text(text: str, categories: list[Category]) -> tuple[float | None, dict[int, float]]:
    default, per_class = None, {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if "=" in item:
            name, value = item.rsplit("=", 1)
            _add_once(per_class, _category_id(name, categories, "--min-score"),
                      _score(value, f"--min-score {name.strip()}"), categories, "--min-score")
        elif default is None:
            default = _score(item, "--min-score")
        else:
            raise LabelerError(f"--min-score {text!r}: more than one default; give the others as class=value")
    return default, per_class


def parse_label_filter(min_score: str | float | None, classes: str | None, categories: list[Category],
                       *, default: float = 0.0) -> LabelFilter:
    """The filter of ``--min-score`` and ``--classes`` over ``categories``; ``default`` when no number is given.

    Raises:
        LabelerError: a malformed value, a score outside [0, 1], or a class the run does not have.
    """
    per_class: dict[int, float] = {}
    chosen: float | None = None
    kept = None
    if isinstance(min_score, (int, float)):
        chosen = _score(min_score, "--min-score")
    elif min_score is not None and min_score.strip().lower().endswith(".json"):
        chosen, per_class, kept = _from_file(min_score.strip(), categories)
    elif min_score is not None:
        chosen, per_class = _from_text(min_score, categories)
    base = default if chosen is None else chosen
    if classes is not None:
        kept = frozenset(_category_id(token, categories, "--classes") for token in classes.split(",") if token.strip())
        if not kept:
            raise LabelerError("--classes: name at least one class")
    return LabelFilter(base, {c: t for c, t in per_class.items() if t != base}, kept)
