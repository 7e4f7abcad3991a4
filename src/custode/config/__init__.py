"""Every setting custode reads, validated: one pydantic model per section."""
