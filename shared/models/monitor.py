"""Tables of the monitor area of the shared schema."""
