"""saeserve's benchmark harness: measurements against a plain forward, plain generate and peers.

``python -m bench all`` runs every measurement of issue 6 side by side with its baseline,
prints a table and rewrites docs/BENCHMARKS.md (see ``bench.__main__`` for the commands).
One module per measurement; ``stats`` holds the timing, ``report`` the table and the file.
Benchmarks are not tests: the test suite only runs ``python -m bench smoke``.
"""
