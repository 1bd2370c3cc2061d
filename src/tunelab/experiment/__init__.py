"""Experiments: several variants trained and evaluated alike, sweeps, and reports."""
