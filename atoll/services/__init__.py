"""Agent services; each subpackage runs inside sandboxes and imports nothing from the rest of atoll."""
