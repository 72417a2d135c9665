"""Small utilities shared by the whole package (file writing, safe loading)."""
