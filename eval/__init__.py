"""ragft eval: answer and retrieval metrics, scoring, system comparison, reports, benchmarks."""

