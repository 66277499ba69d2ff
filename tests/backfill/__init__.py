"""Tests of shadowdb.backfill: the forward and reverse copies, their CLI, crashes and properties."""
