"""The Popek-Goldberg queries and theorems over the model: solver, verdicts, witnesses, proof cache (imports pgvirt.model and z3, never unicorn)."""
