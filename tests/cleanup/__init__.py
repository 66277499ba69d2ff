"""Tests of shadowdb.cleanup: retiring the cell copies, and its races with a rollback."""
