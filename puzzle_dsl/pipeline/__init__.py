"""Stage infrastructure: artifact layout, running one stage, parallel repro, atomic writes."""
