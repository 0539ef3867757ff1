"""The results table: parent and children side by side."""
