"""Is a repository sound: the integrity check (connectivity, or a full fsck), one verdict
per repository; a corrupt repository is reported, never repaired."""
