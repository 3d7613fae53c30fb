"""The backup engine: IMAP reading and writing, blob encryption, pack storage."""
