"""Tests of framework/observe."""
