"""Reports: tables (Markdown, CSV, LaTeX) and the leakage gate, rendered from a run's store."""
