"""The records that replaced frozen dataclasses on run's startup path behave like them:
immutable, equal and hashed by value, the same repr (PlannedRule's is the filter cache key)."""
import copy
import pickle

import pytest

from aarm_sandbox.decode.syscall_table import ArgCond, FilterRule, Verdict
from aarm_sandbox.intercept.filter import PlannedRule
from aarm_sandbox.net.destinations import Destinations, parse_spec
from aarm_sandbox.policy.decision import NO_HOLD, Decision, Hold, Result


def test_frozen_records_refuse_assignment():
    d = Decision(Result.DENY, "r", "why", 13)
    with pytest.raises(AttributeError):
        d.rule = "other"
    with pytest.raises(AttributeError):
        del d.reason
    with pytest.raises(AttributeError):
        ArgCond(0, "eq", 1).value = 2


def test_equality_and_hashing_are_by_value():
    assert Hold() == NO_HOLD and hash(Hold()) == hash(NO_HOLD)
    assert Decision(Result.ALLOW, "r", "x") == Decision(Result.ALLOW, "r", "x", 0, hold=Hold())
    assert Decision(Result.ALLOW, "r", "x") != Decision(Result.ALLOW, "r", "y")
    assert FilterRule(Verdict.NOTIFY, ((ArgCond(1, "masked_eq", 1, 1),),)) in {
        FilterRule(Verdict.NOTIFY, ((ArgCond(1, "masked_eq", 1, 1),),))}
    assert Destinations(["example.com:443", "example.com:443"]).describe() == ["example.com:443"]
    assert parse_spec("10.0.0.1") == parse_spec("10.0.0.1")


def test_repr_is_the_dataclass_one():
    assert repr(PlannedRule("openat", 257, 0x7FC00000, ((2, 7, 1, 1),))) == (
        "PlannedRule(name='openat', nr=257, action=2143289344, comparisons=((2, 7, 1, 1),))")
    assert repr(Hold()) == "Hold(timeout=None, approvers=(), freeze=False, on_deadline='deny')"


def test_copy_and_pickle_keep_the_value():
    d = Decision(Result.STEP_UP, "r", "why", 1, hold=Hold(5.0, ("user:a",), True, "step_up"))
    assert copy.copy(d) == d and copy.deepcopy(d) == d
    assert pickle.loads(pickle.dumps(d)) == d


def test_a_record_with_keyword_only_fields_copies_and_pickles():
    from aarm_sandbox.policy.compiler import CompiledRule
    rule = CompiledRule("r", Result.DENY, "why", 13, None, None, None, None, None, 0,
                        append_args=("--dry-run",), needs_paths=False)
    assert copy.copy(rule) == rule and pickle.loads(pickle.dumps(rule)) == rule
    assert copy.copy(rule).append_args == ("--dry-run",)
