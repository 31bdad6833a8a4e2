"""What a replay is worth: sweeps and frontiers, optimiser, statistics, comparisons, reports, the incumbent."""

# Every bootstrap CI of a setting (Tune, Compare, the Report, eval, optimize) draws this many resamples from this
# seed (stats.bootstrap_means), so the same setting on the same run shows the same interval on every page and in
# the CLI. Kept here, not in stats.py, so that the CLI's --help reads them without loading numpy and scipy.
N_BOOT = 2000
SEED = 0
