"""Tests of shadowdb.objects: reads, writes and lists of the object API in every phase."""
