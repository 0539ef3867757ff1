"""The Nemotron-NAS child model (shipped as remote code with exported children)."""
