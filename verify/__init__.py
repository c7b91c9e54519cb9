"""Popek-Goldberg classification, theorems, reports and the command line (uses pgvirt.model, never unicorn)."""
