"""Audit statistics (epsilon lower bounds from attack scores) and canaries."""
