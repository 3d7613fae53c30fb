"""Tables of the provisioning area of the shared schema."""
