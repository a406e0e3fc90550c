"""Transport helpers shared by servicers: conversions between generated messages and plain Python values."""
