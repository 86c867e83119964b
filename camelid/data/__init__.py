"""Data: canonical records and format converters, chat templates, tokenization and batching."""
