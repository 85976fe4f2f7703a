"""tidings benchmarks: each runs a reference beside tidings in the same run and reports ratios."""
