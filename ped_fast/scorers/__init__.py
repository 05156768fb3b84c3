"""Transferability scorers, behind one registry (docs/spec.md §2).

Features scorers are f(features, labels, ...) -> float: features N x D
(numpy or torch, any device, float32 or float64; never modified), labels N
integers. Probabilities scorers (leep, nce) read the source model's N x K
probabilities (or logits, with logits=True) instead of features. Scores are
computed in float64 unless dtype=torch.float32 is passed. backend=
("auto", "reference", "cpu", ...) picks the backend that runs a scorer's
per-class operations, checked as ped() checks it.

The registry: available() lists every scorer (name, source, what it reads,
whether PED applies); register(name, f, needs="features", shared=None) adds
one, after which ped_fast.ped_score(features, labels, name) runs it;
get(name), unregister(name), saturation(name, value, ...). SCORERS maps the
names of the features scorers (the ones ped_score runs) to their functions.

Plugins: an installed package registers scorers without being imported by
declaring an entry point in the "ped_fast.scorers" group that names a
function, called with no arguments, which calls register()
(docs/integrations.md). Plugins load on the first lookup; one that fails
is left out with a PluginWarning naming its package, and plugin_errors()
lists it.
"""
from . import gbc as _gbc
from . import hscore as _hscore
from . import logme as _logme
from . import sfda as _sfda
from . import transrate as _transrate
from ._input import ClassMoments, Prepared
from ._registry import (SCORERS, PluginError, PluginWarning, Scorer, SharedWork, available, get, plugin_errors,
                        register, saturation, unregister)
from .gbc import gbc
from .hscore import hscore, reg_hscore
from .knn import knn
from .leep import leep
from .logme import logme
from .nce import nce
from .nleep import nleep
from .parc import parc
from .sfda import sfda
from .transrate import transrate

register("sfda", sfda, shared=_sfda.SHARED, saturation=_sfda.saturation, options=("dtype",),
         source="Shao et al., ECCV 2022; the published SFDA code")
register("logme", logme, shared=_logme.SHARED, options=("dtype",),
         source="You et al., ICML 2021; the published LogME code (fixed-point solver)")
register("nleep", nleep, source="Li et al., CVPR 2021")
register("gbc", gbc, shared=_gbc.SHARED, source="Pándy et al., CVPR 2022; Google Research's published code")
register("leep", leep, needs="probabilities", source="Nguyen et al., ICML 2020; tllib/ranking/leep.py")
register("nce", nce, needs="probabilities", source="Tran et al., ICCV 2019; tllib/ranking/nce.py")
register("hscore", hscore, shared=_hscore.HSCORE_SHARED, saturation=_hscore.saturation,
         source="Bao et al., ICIP 2019; tllib/ranking/hscore.py (h_score)")
register("reg_hscore", reg_hscore, shared=_hscore.REG_HSCORE_SHARED,
         source="Ibrahim et al., arXiv 2212.10082; transformer-ranker estimators/hscore.py")
register("transrate", transrate, shared=_transrate.SHARED,
         source="Huang et al., ICML 2022; tllib/ranking/transrate.py")
register("parc", parc, source="Bolya et al., NeurIPS 2021; dbolya/parc methods.py")
register("knn", knn, source="leave-one-out k-NN accuracy; transformer-ranker estimators/nearestneighbors.py")

__all__ = [
    "sfda", "logme", "nleep", "gbc", "leep", "nce", "hscore", "reg_hscore", "transrate", "parc", "knn",
    "SCORERS", "Scorer", "SharedWork", "Prepared", "ClassMoments",
    "available", "get", "register", "unregister", "saturation", "plugin_errors", "PluginError", "PluginWarning",
]
