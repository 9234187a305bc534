"""`python -m eval.bench_speed` is `python -m eval.bench speed`."""

from eval.bench_speed import main

raise SystemExit(main())
