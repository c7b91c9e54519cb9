"""Unicorn as a concrete machine: states, strategies, deviations, counterexample replay and cross-checks (imports pgvirt.model only; the only package that knows unicorn)."""
