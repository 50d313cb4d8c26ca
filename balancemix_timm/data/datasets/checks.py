"""Checks shared by data-set pairs: :func:`check_same_classes` (train and val give every class
column the same meaning).
"""

from __future__ import annotations

from typing import Any

__all__ = ["check_same_classes"]


def check_same_classes(train: Any, val: Any, *, names: tuple[str, str] = ("train", "val")) -> None:
    """Check that two data sets give every class column the same meaning.

    The class names must agree column by column and, when both data sets carry
    ``category_ids`` (COCO), so must the category ids.

    Args:
        train: a data set with ``classes`` (and optionally ``category_ids``).
        val: the other data set.
        names: how the two are named in the error message.

    Raises:
        ValueError: listing the categories found in only one of them and the columns whose
            class differs.
    """
    a_name, b_name = names
    a, b = list(train.classes), list(val.classes)
    a_ids = list(getattr(train, "category_ids", range(len(a))))
    b_ids = list(getattr(val, "category_ids", range(len(b))))
    if a == b and a_ids == b_ids:
        return
    a_cats = [f"{n!r} (id {i})" for n, i in zip(a, a_ids)]
    b_cats = [f"{n!r} (id {i})" for n, i in zip(b, b_ids)]
    only_a = [c for c in a_cats if c not in b_cats]
    only_b = [c for c in b_cats if c not in a_cats]
    columns = [f"{k}: {x} vs {y}" for k, (x, y) in enumerate(zip(a_cats, b_cats)) if x != y]
    parts = [f"{a_name} has {len(a)} classes and {b_name} has {len(b)}"]
    if only_a:
        parts.append(f"only in {a_name}: {', '.join(only_a)}")
    if only_b:
        parts.append(f"only in {b_name}: {', '.join(only_b)}")
    if columns:
        parts.append(f"differing class columns: {'; '.join(columns[:10])}"
                     + (" ..." if len(columns) > 10 else ""))
    raise ValueError(f"the {a_name} and {b_name} data sets declare different categories, so a "
                     f"class column would mean different things: " + "; ".join(parts))
