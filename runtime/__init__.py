"""The runtime core: OCI bundles to running, isolated processes."""
