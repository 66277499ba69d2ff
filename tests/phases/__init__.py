"""Tests of shadowdb.phases: which databases each phase's strategy touches."""
