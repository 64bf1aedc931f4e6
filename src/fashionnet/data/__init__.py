"""Data: sources -> records -> decoded uint8 images -> splits -> batches."""
