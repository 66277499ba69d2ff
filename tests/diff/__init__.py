"""Tests of shadowdb.diff: the differ and the diff-report command."""
