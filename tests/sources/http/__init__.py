"""Tests of framework/sources/http."""
