"""Engines hand chunks of grid points to an evaluator and store what it returns."""
