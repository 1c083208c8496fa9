"""The methods, each one module composed of the shared samplers, scorers and pair makers."""
