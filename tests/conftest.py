import os

# Figures are written headless in tests.
os.environ.setdefault("MPLBACKEND", "Agg")
