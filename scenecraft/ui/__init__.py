"""Terminal UI (Rich). Only the CLI imports this package; engines report through events."""
