"""Scorer plugins that fail (see pyproject.toml): ped_fast reports each and
keeps none of their scorers."""
import ped_fast

NOT_A_FUNCTION = "an entry point must name a function"


def mean_feature(features, labels):
    return float(features.mean())


def register_then_fail():
    """Registers a scorer, then fails: the scorer must not stay registered."""
    ped_fast.scorers.register("half_registered", mean_feature)
    raise RuntimeError("the plugin failed after registering half_registered")


def replace_sfda():
    """Replaces a built-in scorer: a plugin may only add scorers."""
    ped_fast.scorers.register("sfda", mean_feature, replace=True)
