"""Reproductions of the paper's experiments: the Table 1 comparison of surrogate objectives."""
