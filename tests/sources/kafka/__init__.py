"""Tests of framework/sources/kafka."""
