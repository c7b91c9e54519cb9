"""Unicorn harness: counterexample replay and model-versus-emulator cross-checks (uses pgvirt.model)."""
