"""tidpo: Token-Importance Guided Direct Preference Optimization (TI-DPO, arXiv 2505.19653)."""

__version__ = "0.1.0"
