"""Model I/O: the Nemotron-NAS child, checkpoints, parent import, block library, assembly."""
