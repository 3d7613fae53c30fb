"""The mailops services: provisioning, backup and monitor."""
