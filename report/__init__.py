"""Every output format of every command: rich text, JSON documents, JUnit and SARIF (imports any package below it, never pgvirt.cli or pgvirt.notebook)."""
