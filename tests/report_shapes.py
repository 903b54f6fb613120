"""The yardstick for every stage's report: its keys are exactly those its TypedDict in ``shears_nncf.reports``
declares."""

from __future__ import annotations


def assert_report_shape(report: dict, cls: type) -> None:
    """Every required key present, no key the type does not declare (a report and its type cannot drift apart)."""
    keys = set(report)
    missing = cls.__required_keys__ - keys
    extra = keys - cls.__required_keys__ - cls.__optional_keys__
    assert not missing and not extra, f"{cls.__name__}: missing {sorted(missing)}, undeclared {sorted(extra)}"
