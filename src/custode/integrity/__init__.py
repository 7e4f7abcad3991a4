"""Is a repository sound: the integrity check and the health verdict."""
