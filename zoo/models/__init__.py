"""One folder per family: config with named sizes, checkpoint conversion, README."""
