"""Membership-inference plumbing: metrics, statistics, reference models, signals and evaluation sets."""
