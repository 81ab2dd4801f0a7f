"""Architecture search: a genetic algorithm over a declared space of CNNs, scored in onnxruntime.

Modules, from the data up:
  genes, expr, space  the search space: gene types, the safe `when`/constraint expressions,
                      the SearchSpace (sampling, repair, canonical keys) and its TOML loader
  types               Objective, SearchConfig, Record, GenerationStats, SearchResult
  ranking             single-objective order with limits; NSGA-II sorting for Pareto searches
  checkpoint          the search state as JSON, checked on resume
  dispatch            fitness calls inline, in a local process pool or on any Executor
  engine              the genetic search and the random-search baseline (`search`, `random_search`)
  evaluate            the shipped fitness: build, train, export and measure a candidate
  plot                accuracy vs latency with the front highlighted
  run                 `run_search`: the whole `onnxopt search` workflow as one library call
"""
