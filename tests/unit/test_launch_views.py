"""Which directories become views (launch.views.plan_views)."""
from __future__ import annotations

from aarm_sandbox.launch import views
from aarm_sandbox.launch.views import plan_views


def test_every_parent_of_a_masked_name_becomes_a_view_parents_first(tmp_path):
    home = tmp_path / "home"
    (home / ".config").mkdir(parents=True)
    masked = [str(home / ".config" / "gcloud"), str(home / ".ssh"), str(home / ".netrc"),
              "/etc/shadow", "/secret", str(tmp_path / "absent" / "x")]
    pairs, warnings = plan_views(masked, [str(tmp_path / "ws")])
    assert pairs == [("/etc", "shadow"), (str(home), ".ssh"), (str(home), ".netrc"),
                     (str(home / ".config"), "gcloud")]
    assert warnings == []


def test_no_view_of_a_writable_directory_and_it_is_said(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    pairs, warnings = plan_views([str(home / ".netrc")], [str(home)])
    assert pairs == [] and "not hidden" in warnings[0] and str(home) in warnings[0]


def test_a_directory_too_large_to_bind_entry_by_entry_is_left_to_masks(tmp_path, monkeypatch):
    monkeypatch.setattr(views, "MAX_ENTRIES", 3)
    for i in range(4):
        (tmp_path / f"f{i}").write_text("")
    pairs, warnings = plan_views([str(tmp_path / ".netrc")], [])
    assert pairs == [] and "more than 3 entries" in warnings[0]
