"""Monitors that run a real guest on Unicorn: native, trap-and-emulate, paravirtual, scan-and-trap."""
