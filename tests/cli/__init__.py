"""Tests of shadowdb.cli: the command line end to end, its refusals, interrupts and rough edges."""
