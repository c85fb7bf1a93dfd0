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


def test_a_home_reached_through_a_symlink_is_no_view_when_it_is_the_workspace(tmp_path):
    """The workspace is compared as the mount will land: HOME=/link -> real/home with the
    workspace real/home made the workspace read-only."""
    real = tmp_path / "real" / "home"
    real.mkdir(parents=True)
    link = tmp_path / "homelink"
    link.symlink_to(real)
    pairs, warnings = plan_views([str(link / ".netrc")], [str(real)])
    assert pairs == [] and warnings


def test_a_credential_directory_that_is_a_symlink_into_the_workspace_is_no_view(tmp_path):
    home, ws = tmp_path / "home", tmp_path / "home" / "proj"
    (ws / "dockercfg").mkdir(parents=True)
    (home / ".docker").symlink_to(ws / "dockercfg")
    pairs, warnings = plan_views([str(home / ".docker" / "config.json")], [str(ws)])
    assert (str(home / ".docker"), "config.json") not in pairs and warnings
