"""Fuzz onnxopt's CLI with damaged models, data files, option values and output paths.

Run `make fuzz N=5000 [SEED=0]` (or `python -m scripts.fuzz -n 5000 --seed 0`); a few hundred
cases also run inside the test suite (tests/test_fuzz.py). Modules: `chooser` (where random
choices come from), `models`/`mutate` (base models, model damage), `data` (data files),
`options` (bad option values), `cases`/`damage`/`generate` (invocations), `worker`/`runner`
(child processes), `checks` (the rules a case must keep), `report` (the summary table).
"""
