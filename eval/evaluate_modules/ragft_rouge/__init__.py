"""Package marker so that the module ships with the wheel; evaluate.load() reads the script beside it."""
