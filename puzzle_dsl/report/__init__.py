"""Results table and plots."""
