"""Tests of framework/sources/schedule."""
