"""Analysis of models: explain (which tokens mattered), evaluation (implicit rewards, checked
answers, win rate), diversity, the rows' verifiable checks, the importance study, and the run
report's model work (`tidpo.analysis.run_report`, JSON files only).

May import `tidpo.functional`, `tidpo.data`, `tidpo.training` and the foundation modules.
"""
