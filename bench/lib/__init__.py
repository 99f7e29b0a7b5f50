"""The science library that methods share: datasets and task protocols, model architectures,
training loops, privacy accounting, membership-inference plumbing, inversion plumbing, audit
statistics, distillation and DP-synthetic-data pieces. Imports only ``bench.core``."""
