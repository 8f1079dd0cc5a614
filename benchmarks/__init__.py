"""Side-by-side benchmarks of edgekit recipes and anomalib models (not part of the installed package).

Entry point: ``python -m benchmarks.compare --data DIR --out results/`` (see benchmarks/README.md).
"""
