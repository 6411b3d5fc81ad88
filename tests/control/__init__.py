"""Tests of framework/control."""
