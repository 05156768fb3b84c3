"""A plugin whose dependency is not installed: importing it fails."""
import ped_fast_dependency_not_installed  # noqa: F401


def register():
    raise AssertionError("never reached: the import above fails")
