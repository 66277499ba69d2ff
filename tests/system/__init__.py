"""Whole-system tests: the soak, Galera, the documents, fuzzing, Nova-built deployments, imports."""
