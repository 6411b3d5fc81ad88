"""Tests of framework/kafka."""
