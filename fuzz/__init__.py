"""atheris (libFuzzer) harnesses: run as `python -m fuzz.<harness> -runs=N -max_total_time=S` from the repo root.

See fuzz/README.md. tests/hostile/test_atheris.py runs each of them in CI.
"""
