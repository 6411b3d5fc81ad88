"""The benchmark suite (`make bench`, `python -m benchmarks [--quick]`).

Every case is measured against a raw baseline taken in the same run on the same machine, repeated after a
warm-up, and reported as the median of the repetitions (see `suite.py` for the order of the run).
"""
