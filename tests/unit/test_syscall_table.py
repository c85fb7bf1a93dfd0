"""The one syscall table drives both the filter and the decoder: check they agree."""
import pytest

from aarm_sandbox.decode.handlers import DISPATCH, HANDLERS
from aarm_sandbox.decode.syscall_table import NOTIFIED, SYSCALLS, BY_NR


@pytest.mark.parametrize("spec", [s for s in SYSCALLS if s.nr in NOTIFIED], ids=lambda s: s.name)
def test_every_notified_syscall_has_a_decoder(spec):
    assert spec.handler in HANDLERS, f"{spec.name} is notified but has no decoder"
    assert DISPATCH[spec.nr][0] is spec


def test_numbers_and_names_are_unique():
    assert len({s.nr for s in SYSCALLS}) == len(SYSCALLS)
    assert len({s.name for s in SYSCALLS}) == len(SYSCALLS)


def test_decoders_exist_only_for_notified_syscalls():
    assert set(DISPATCH) == set(NOTIFIED)
    assert all(BY_NR[nr].nr == nr for nr in DISPATCH)
