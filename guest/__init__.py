"""Guest binaries: ELF/raw images, decoding, scan, patch and check-patch, the hypercall manifest (imports pgvirt.model and pgvirt.verify, never unicorn or pgvirt.emulator)."""
