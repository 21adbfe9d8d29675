"""One module per method. `registry` holds their defaults without importing torch."""
