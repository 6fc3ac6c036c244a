"""Multiple comparisons: FDR, Bonferroni, permutations, clusters, TFCE."""
