"""Tables of the backup area of the shared schema."""
