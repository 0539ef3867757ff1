"""Training helpers shared by BLD and GKD: optimizer, schedules, distributed."""
