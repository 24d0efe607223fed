"""Studies: `tidpo experiment` (the paper's comparisons, with statistics that say when there is no
difference) and `tidpo bench` (step time and memory against TRL's DPOTrainer).

May import `tidpo.functional`, `tidpo.data`, `tidpo.training`, `tidpo.analysis` and the
foundation modules.
"""
