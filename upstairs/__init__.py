"""upstairs package."""
