"""One module per group of cases; each `run(env)` returns its Series, failed ones included."""
