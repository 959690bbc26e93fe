"""Patient data: identifiers found and redacted, de-identification profiles, the PHI scan."""
