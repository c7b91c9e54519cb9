"""The widgets and tables the notebooks call, one call per cell (imports everything below, nothing imports it)."""
