"""tidpo: Token-Importance Guided Direct Preference Optimization (TI-DPO, arXiv 2505.19653).

The public face, for a TRL user: ``from tidpo import TIDPOConfig, TIDPOTrainer,
load_preferences``. The names load on first use (PEP 562), so ``import tidpo.functional`` stays
light. The packages are the layers, each importing only those before it
(docs/architecture.md): `tidpo.functional` (the math), `tidpo.data`, `tidpo.training`,
`tidpo.analysis`, `tidpo.studies`, `tidpo.report`, `tidpo.cli`; below them all, `tidpo.errors`
and `tidpo.fileio`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["TIDPOConfig", "TIDPOTrainer", "__version__", "load_preferences"]

_LAZY = {
    "TIDPOConfig": "tidpo.training.config",
    "TIDPOTrainer": "tidpo.training.trainer",
    "load_preferences": "tidpo.data",
}

if TYPE_CHECKING:
    from tidpo.data import load_preferences
    from tidpo.training.config import TIDPOConfig
    from tidpo.training.trainer import TIDPOTrainer


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tidpo' has no attribute {name!r}")
