"""Code shared by the mailops services: settings, database, schema, auth, errors, queue."""
