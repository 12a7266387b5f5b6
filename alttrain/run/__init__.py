"""From a command line to a run: config validation, building, the run dir, the app flow, the CLI."""
