"""What custode remembers: the state database, the audit log."""
