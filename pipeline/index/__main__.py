"""`python -m pipeline.index`: see `pipeline.index.cli`."""

from pipeline.index.cli import main

raise SystemExit(main())
