"""Example environments for `env=custom`; a regular package so that `examples.<module>` in the working directory is
the one imported, not another distribution's `examples`."""
