"""fi_data: First Impressions V2 from files on disk to batches of tensors."""
