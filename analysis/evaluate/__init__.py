"""What a replay is worth: sweeps and frontiers, optimiser, statistics, comparisons, reports, the incumbent."""
