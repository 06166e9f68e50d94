"""The YAML config: its pydantic schema and load_config() (schema), and mergekit-moe's spellings of it (spellings)."""
