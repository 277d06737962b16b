"""The baseline: the same endpoints written the way most tutorials write them."""
